/*
 * Fused CPU kernels for SEQR routing, compiled on first use by seqr/routing/native.py.
 *
 * seqr_select: z = A x, the pair products z_j z_k, the Gram forms q_i = z^T G_i z of every
 * candidate, and the arg max of sqrt(q_i) - c_i, in one pass per block of tokens. The caller
 * folds calibration into the inputs: G_i is divided by sigma_i^2 and c_i = mu_i / sigma_i, so
 * sqrt(q_i) - c_i = (||R_i z|| - mu_i) / sigma_i. The (tokens, N) score matrix is never
 * written: a block of adapters is skipped when none of its lanes can beat the best score so far,
 * which a compare on squares decides without a square root.
 *
 * seqr_update: out[t] += Q_i (R_i z_t) for each token's chosen adapter i, with Q stored
 * transposed, (N, r, m), so every output row is r vector multiply-adds.
 *
 * Plain C11 with GCC/Clang vector extensions; no torch headers. Arrays are contiguous float32
 * or int64, as native.py checks before each call.
 */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX__)
#include <immintrin.h>
#endif

/*
 * Floats per vector: 16 where AVX-512 is enabled, else 8. splat() supports only these two widths.
 * native.py reads the width from seqr_lanes().
 */
#ifndef LANES
#if defined(__AVX512F__)
#define LANES 16
#else
#define LANES 8
#endif
#endif
#if LANES != 8 && LANES != 16
#error "LANES must be 8 or 16"
#endif
#define TOKEN_BLOCK 4      /* tokens scored together against each block of adapters */
#define TOKEN_CHUNK 64     /* tokens a thread projects and scores as one unit of work */
#define PROJECT_TILE 512   /* columns of A per tile: 8 rows of 512 floats are 16 KiB, half of a 32 KiB L1; native.py packs A alike */
#define MAX_PAIRS 2080     /* r (r + 1) / 2 for r = 64 */

/*
 * Keep a loaded vector in a register. Without this, GCC 12 folded the load into every FMA that
 * used it (seen in its assembly), so the loads, not the FMAs, set the pace.
 * Only used where one register fits a whole vector.
 */
#if defined(__GNUC__) && defined(__AVX512F__) && LANES == 16
#define IN_REGISTER(v) __asm__("" : "+v"(v))
#elif defined(__GNUC__) && defined(__AVX__) && LANES == 8
#define IN_REGISTER(v) __asm__("" : "+x"(v))
#else
#define IN_REGISTER(v) ((void)0)
#endif

typedef float vf __attribute__((vector_size(LANES * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(LANES * sizeof(int32_t))));

int seqr_lanes(void) { return LANES; }

static inline vf load(const float *p) {
    vf v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void store(float *p, vf v) { memcpy(p, &v, sizeof v); }

/* An initialiser list compiles to one broadcast; a loop over lanes, or 0 + s, does not. */
static inline vf splat(float s) {
#if LANES == 16
    vf v = {s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s};
#else
    vf v = {s, s, s, s, s, s, s, s};
#endif
    return v;
}

static inline float lane_sum(vf v) {
    float s = 0.0f;
    for (int i = 0; i < LANES; i++) s += v[i];
    return s;
}

static inline int any_lane(vi m) {
#if defined(__AVX__) && LANES == 8
    return _mm256_movemask_ps((__m256)m) != 0;
#else
    int32_t acc = 0;
    for (int i = 0; i < LANES; i++) acc |= m[i];
    return acc != 0;
#endif
}

/*
 * z[t] = A x[t] for `count` tokens (rows of x, stride n), A (r, n) row-major, z (count, r).
 * `packed` stores A's first n - n % LANES columns tile by tile: the tile of columns [k0, k0 + w)
 * starts at packed + k0 r with its r rows of w floats one after another. Rows of A itself
 * lie n floats apart, which for n a power of two maps them all to the same L1 cache sets.
 * Two tokens times four rows make eight independent accumulators, enough for both FMA units.
 * `partial` is scratch space for count * r vectors.
 */
static void project(const float *x, int64_t count, int64_t n, const float *a, const float *packed, int64_t r,
                    float *z, vf *partial) {
    for (int64_t i = 0; i < count * r; i++) partial[i] = splat(0.0f);
    const int64_t full = n - n % LANES;
    for (int64_t k0 = 0; k0 < full; k0 += PROJECT_TILE) {
        const int64_t width = k0 + PROJECT_TILE < full ? PROJECT_TILE : full - k0;
        const float *tile = packed + k0 * r;
        for (int64_t t = 0; t < count; t += 2) {
            const float *x0 = x + t * n + k0;
            const float *x1 = t + 1 < count ? x0 + n : x0; /* an odd last token pairs with itself */
            vf *p0 = partial + t * r;
            vf *p1 = t + 1 < count ? p0 + r : NULL;
            int64_t j = 0;
            for (; j + 4 <= r; j += 4) {
                const float *a0 = tile + j * width, *a1 = a0 + width, *a2 = a1 + width, *a3 = a2 + width;
                vf s00 = splat(0.0f), s01 = s00, s02 = s00, s03 = s00, s10 = s00, s11 = s00, s12 = s00, s13 = s00;
                for (int64_t k = 0; k < width; k += LANES) {
                    vf u = load(x0 + k), v = load(x1 + k);
                    IN_REGISTER(u);
                    IN_REGISTER(v);
                    vf w = load(a0 + k);
                    IN_REGISTER(w);
                    s00 += u * w;
                    s10 += v * w;
                    w = load(a1 + k);
                    IN_REGISTER(w);
                    s01 += u * w;
                    s11 += v * w;
                    w = load(a2 + k);
                    IN_REGISTER(w);
                    s02 += u * w;
                    s12 += v * w;
                    w = load(a3 + k);
                    IN_REGISTER(w);
                    s03 += u * w;
                    s13 += v * w;
                }
                p0[j] += s00;
                p0[j + 1] += s01;
                p0[j + 2] += s02;
                p0[j + 3] += s03;
                if (p1) {
                    p1[j] += s10;
                    p1[j + 1] += s11;
                    p1[j + 2] += s12;
                    p1[j + 3] += s13;
                }
            }
            for (; j < r; j++) {
                const float *aj = tile + j * width;
                vf s0 = splat(0.0f), s1 = s0;
                for (int64_t k = 0; k < width; k += LANES) {
                    const vf w = load(aj + k);
                    s0 += load(x0 + k) * w;
                    s1 += load(x1 + k) * w;
                }
                p0[j] += s0;
                if (p1) p1[j] += s1;
            }
        }
    }
    for (int64_t t = 0; t < count; t++) {
        for (int64_t j = 0; j < r; j++) {
            float sum = lane_sum(partial[t * r + j]);
            for (int64_t k = full; k < n; k++) sum += x[t * n + k] * a[j * n + k];
            z[t * r + j] = sum;
        }
    }
}

/* p = the products z_j z_k for j <= k, in row-major upper-triangle order (torch.triu_indices). */
static void pair_products(const float *z, int64_t r, float *p) {
    int64_t at = 0;
    for (int64_t j = 0; j < r; j++)
        for (int64_t k = j; k < r; k++) p[at++] = z[j] * z[k];
}

/* The running best of one token: its score, its adapter, and `low`, a bound used by consider(). */
typedef struct {
    float top;
    float low;
    int64_t arg;
} best_so_far;

/* Relative margin that covers float rounding in consider()'s test on squares. */
#define MARGIN 2e-5f

static inline void set_best(best_so_far *best, float score, int64_t i) {
    best->top = score;
    best->low = score - MARGIN * fabsf(score) - 1e-30f;
    best->arg = i;
}

/*
 * Fold the LANES scores of block b for one token into its running best. A lane can win only if
 * sqrt(q) - c > top, that is sqrt(q) > c + top. The caller passes c_low = c - MARGIN |c|, so
 * lo = c_low + best->low lies a little below c + top: lanes with lo <= 0 or q >= lo^2 are
 * checked exactly, and the others cannot win. Most blocks are skipped without a square root.
 */
static inline void consider(vf q, int64_t b, const float *c, const float *c_low, int64_t adapters,
                            best_so_far *best) {
    const vf lo = load(c_low + b * LANES) + splat(best->low);
    const vi maybe = (lo <= splat(0.0f)) | (q >= lo * lo);
    if (!any_lane(maybe)) return;
    for (int lane = 0; lane < LANES; lane++) {
        const int64_t i = b * LANES + lane;
        if (i >= adapters) break;
        const float s = sqrtf(q[lane] > 0.0f ? q[lane] : 0.0f) - c[i];
        if (s > best->top) set_best(best, s, i);
    }
}

/*
 * x (T, n), a (r, n) and the same packed by tiles (see project()), gram (blocks, P, LANES) with blocks = ceil(N / LANES) rounded up to an even
 * number and padded lanes zero, c and c_low = c - MARGIN |c| (blocks * LANES,) with padded lanes zero. Writes
 * z (T, r), index (T,) and best (T,). Returns 0, 1 when r is too large, 2 when out of memory.
 */
int seqr_select(const float *x, int64_t tokens, int64_t n, const float *a, const float *packed, int64_t r,
                const float *gram,
                const float *c, const float *c_low, int64_t adapters, float *z, int64_t *index, float *best,
                int threads) {
    const int64_t pairs = r * (r + 1) / 2;
    if (pairs > MAX_PAIRS) return 1;
    const int64_t blocks = 2 * ((adapters + 2 * LANES - 1) / (2 * LANES));
    int64_t chunk = (tokens + threads - 1) / threads;
    chunk = chunk > TOKEN_CHUNK ? TOKEN_CHUNK : chunk;
    chunk = (chunk + TOKEN_BLOCK - 1) / TOKEN_BLOCK * TOKEN_BLOCK;
    const int64_t chunks = (tokens + chunk - 1) / chunk;
    int failed = 0;

#pragma omp parallel for schedule(static) num_threads(threads) reduction(| : failed)
    for (int64_t ci = 0; ci < chunks; ci++) {
        const int64_t c0 = ci * chunk;
        const int64_t count = tokens - c0 < chunk ? tokens - c0 : chunk;
        vf *partial = aligned_alloc(sizeof(vf), (size_t)(count * r) * sizeof(vf)); /* vf needs 32-byte alignment */
        float *p = malloc((size_t)(TOKEN_BLOCK * pairs) * sizeof(float));
        if (!partial || !p) {
            free(partial);
            free(p);
            failed |= 1;
            continue;
        }
        project(x + c0 * n, count, n, a, packed, r, z + c0 * r, partial);
        for (int64_t t0 = 0; t0 < count; t0 += TOKEN_BLOCK) {
            const int64_t live = count - t0 < TOKEN_BLOCK ? count - t0 : TOKEN_BLOCK;
            best_so_far found[TOKEN_BLOCK];
            for (int64_t u = 0; u < TOKEN_BLOCK; u++) {
                found[u] = (best_so_far){-INFINITY, -INFINITY, 0};
                if (u < live)
                    pair_products(z + (c0 + t0 + u) * r, r, p + u * pairs);
                else
                    memset(p + u * pairs, 0, (size_t)pairs * sizeof(float));
            }
            const float *p0 = p, *p1 = p + pairs, *p2 = p + 2 * pairs, *p3 = p + 3 * pairs;
            for (int64_t b = 0; b < blocks; b += 2) {
                /* four tokens times two blocks of adapters: eight independent accumulators */
                const float *g = gram + b * pairs * LANES, *h = g + pairs * LANES;
                vf q0 = splat(0.0f), q1 = q0, q2 = q0, q3 = q0, e0 = q0, e1 = q0, e2 = q0, e3 = q0;
                for (int64_t k = 0; k < pairs; k++) {
                    vf gv = load(g + k * LANES), hv = load(h + k * LANES);
                    IN_REGISTER(gv);
                    IN_REGISTER(hv);
                    const vf w0 = splat(p0[k]), w1 = splat(p1[k]), w2 = splat(p2[k]), w3 = splat(p3[k]);
                    q0 += w0 * gv;
                    e0 += w0 * hv;
                    q1 += w1 * gv;
                    e1 += w1 * hv;
                    q2 += w2 * gv;
                    e2 += w2 * hv;
                    q3 += w3 * gv;
                    e3 += w3 * hv;
                }
                const vf first[TOKEN_BLOCK] = {q0, q1, q2, q3}, second[TOKEN_BLOCK] = {e0, e1, e2, e3};
                for (int64_t u = 0; u < live; u++) {
                    consider(first[u], b, c, c_low, adapters, &found[u]);
                    consider(second[u], b + 1, c, c_low, adapters, &found[u]);
                }
            }
            for (int64_t u = 0; u < live; u++) {
                index[c0 + t0 + u] = found[u].arg;
                best[c0 + t0 + u] = found[u].top;
            }
        }
        free(partial);
        free(p);
    }
    return failed ? 2 : 0;
}

/*
 * out[t] += scale * Q_i (R_i z_t) with i = index[t] < N; z (T, r), r_factors (N, r, r),
 * q_t (N, r, m) (each Q_i transposed), out (T, m). Returns 0, or 1 when r is too large.
 */
int seqr_update(const float *z, int64_t tokens, int64_t r, const int64_t *index, int64_t adapters,
                const float *r_factors, const float *q_t, int64_t m, float scale, float *out, int threads) {
    if (r > 64) return 1;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t t = 0; t < tokens; t++) {
        const int64_t i = index[t];
        if (i < 0 || i >= adapters) continue; /* native.py checks the range first */
        const float *rt = r_factors + i * r * r;
        const float *zt = z + t * r;
        float u[64];
        for (int64_t j = 0; j < r; j++) {
            float s = 0.0f;
            for (int64_t k = 0; k < r; k++) s += rt[j * r + k] * zt[k];
            u[j] = scale * s;
        }
        const float *qi = q_t + i * r * m;
        float *o = out + t * m;
        int64_t col = 0;
        for (; col + LANES <= m; col += LANES) {
            vf acc = load(o + col);
            for (int64_t j = 0; j < r; j++) acc += splat(u[j]) * load(qi + j * m + col);
            store(o + col, acc);
        }
        for (; col < m; col++) {
            float acc = o[col];
            for (int64_t j = 0; j < r; j++) acc += u[j] * qi[j * m + col];
            o[col] = acc;
        }
    }
    return 0;
}
