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
#define TOKEN_BLOCK 6      /* tokens projected together, and scored together against each pair of adapter blocks */
#define TOKEN_CHUNK 66     /* tokens a thread projects and scores as one unit of work, a multiple of TOKEN_BLOCK */
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

#define PROJECT_STEP(xu, s0, s1)   \
    do {                           \
        vf u = load((xu) + k);     \
        IN_REGISTER(u);            \
        s0 += u * w0;              \
        s1 += u * w1;              \
    } while (0)

/* Add one tile of A x for six tokens to partial (6 r vectors). xs[u] points at token u's part of the tile. */
static inline void project_six(const float *const xs[TOKEN_BLOCK], const float *tile, int64_t width, int64_t r,
                               vf *partial) {
    const float *x0 = xs[0], *x1 = xs[1], *x2 = xs[2], *x3 = xs[3], *x4 = xs[4], *x5 = xs[5];
    for (int64_t j = 0; j < r; j += 2) {
        const float *a0 = tile + j * width, *a1 = j + 1 < r ? a0 + width : a0; /* an odd last row pairs with itself */
        vf s00 = splat(0.0f), s01 = s00, s10 = s00, s11 = s00, s20 = s00, s21 = s00;
        vf s30 = s00, s31 = s00, s40 = s00, s41 = s00, s50 = s00, s51 = s00;
        for (int64_t k = 0; k < width; k += LANES) {
            vf w0 = load(a0 + k), w1 = load(a1 + k);
            IN_REGISTER(w0);
            IN_REGISTER(w1);
            PROJECT_STEP(x0, s00, s01);
            PROJECT_STEP(x1, s10, s11);
            PROJECT_STEP(x2, s20, s21);
            PROJECT_STEP(x3, s30, s31);
            PROJECT_STEP(x4, s40, s41);
            PROJECT_STEP(x5, s50, s51);
        }
        const vf first[TOKEN_BLOCK] = {s00, s10, s20, s30, s40, s50};
        const vf second[TOKEN_BLOCK] = {s01, s11, s21, s31, s41, s51};
        for (int64_t u = 0; u < TOKEN_BLOCK; u++) {
            partial[u * r + j] += first[u];
            if (j + 1 < r) partial[u * r + j + 1] += second[u];
        }
    }
}

/* The same for one token: eight rows at a time give eight accumulators. */
static inline void project_one(const float *x, const float *tile, int64_t width, int64_t r, vf *partial) {
    for (int64_t j = 0; j < r; j += 8) {
        const float *rows[8];
        for (int64_t i = 0; i < 8; i++) rows[i] = tile + (j + i < r ? j + i : r - 1) * width; /* missing rows repeat the last */
        vf s[8];
        for (int64_t i = 0; i < 8; i++) s[i] = splat(0.0f);
        for (int64_t k = 0; k < width; k += LANES) {
            vf u = load(x + k);
            IN_REGISTER(u);
            for (int64_t i = 0; i < 8; i++) s[i] += u * load(rows[i] + k);
        }
        for (int64_t i = 0; i < 8 && j + i < r; i++) partial[j + i] += s[i];
    }
}

/*
 * z[t] = A x[t] for `count` tokens (rows of x, stride n), A (r, n) row-major, z (count, r).
 * `packed` stores A's first n - n % LANES columns tile by tile: the tile of columns [k0, k0 + w)
 * starts at packed + k0 r with its r rows of w floats one after another. Rows of A itself
 * lie n floats apart, which for n a power of two maps them all to the same L1 cache sets.
 * Groups of six tokens take twelve independent accumulators. An FMA's result is ready four or
 * five cycles after it starts and two can start per cycle. So where the latency is five (AMD
 * Zen 2), eight chains leave the FMA units idle a fifth of the time. Fewer than six tokens, as
 * in a decoding step, go one by one. `partial` is scratch space for count * r vectors.
 */
static void project(const float *x, int64_t count, int64_t n, const float *a, const float *packed, int64_t r,
                    float *z, vf *partial) {
    for (int64_t i = 0; i < count * r; i++) partial[i] = splat(0.0f);
    const int64_t full = n - n % LANES;
    for (int64_t k0 = 0; k0 < full; k0 += PROJECT_TILE) {
        const int64_t width = k0 + PROJECT_TILE < full ? PROJECT_TILE : full - k0;
        const float *tile = packed + k0 * r;
        int64_t t = 0;
        for (; t + TOKEN_BLOCK <= count; t += TOKEN_BLOCK) {
            const float *xs[TOKEN_BLOCK];
            for (int64_t u = 0; u < TOKEN_BLOCK; u++) xs[u] = x + (t + u) * n + k0;
            project_six(xs, tile, width, r, partial + t * r);
        }
        for (; t < count; t++) project_one(x + t * n + k0, tile, width, r, partial + t * r);
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

static inline vf vector_sqrt(vf v) {
#if defined(__AVX512F__) && LANES == 16
    return (vf)_mm512_sqrt_ps((__m512)v);
#elif defined(__AVX__) && LANES == 8
    return (vf)_mm256_sqrt_ps((__m256)v);
#else
    for (int i = 0; i < LANES; i++) v[i] = sqrtf(v[i]);
    return v;
#endif
}

/*
 * Fold the LANES scores of block b for one token into its running best. A lane can win only if
 * sqrt(q) - c > top, that is sqrt(q) > c + top. The caller passes c_low = c - MARGIN |c|, so
 * lo = c_low + best->low lies a little below c + top: lanes with lo <= 0 or q >= lo^2 are
 * checked exactly, and the others cannot win. Most blocks are skipped without a square root,
 * and the rest take one vector square root, without a branch per lane.
 */
static inline void consider(vf q, int64_t b, const float *c, const float *c_low, int64_t adapters,
                            best_so_far *best) {
    const vf lo = load(c_low + b * LANES) + splat(best->low);
    const vi maybe = (lo <= splat(0.0f)) | (q >= lo * lo) | (q != q);
    if (!any_lane(maybe)) return;
    /* q < 0 from rounding counts as 0. NaN (from NaN or infinite x) counts as +inf, so the first
       NaN wins, as with torch.argmax on the torch path's scores. */
    const vi nan = q != q;
    const vf clamped = (vf)(((vi)q & (q > splat(0.0f)) & ~nan) | ((vi)splat(INFINITY) & nan));
    vf s = vector_sqrt(clamped) - load(c + b * LANES);
    for (int lane = 0; lane < LANES && (b + 1) * LANES > adapters; lane++)
        if (b * LANES + lane >= adapters) s[lane] = -INFINITY; /* padding */
    float top = s[0];
    for (int lane = 1; lane < LANES; lane++) top = s[lane] > top ? s[lane] : top;
    if (!(top > best->top)) return;
    int lane = 0;
    while (s[lane] != top) lane++; /* the first of equal scores wins */
    set_best(best, top, b * LANES + lane);
}

/* One pair product of one token against a column of both blocks: two of the twelve accumulators. */
#define GRAM_STEP(pu, q, e)            \
    do {                               \
        const vf w = splat((pu)[k]);   \
        q += w * gv;                   \
        e += w * hv;                   \
    } while (0)

/* Fold the Gram forms of six tokens into found[0..5], two blocks at a time. p holds their 6 P pair products. */
static void score_six(const float *p, int64_t pairs, const float *gram, int64_t blocks, const float *c,
                      const float *c_low, int64_t adapters, best_so_far *found) {
    const float *p0 = p, *p1 = p + pairs, *p2 = p + 2 * pairs, *p3 = p + 3 * pairs;
    const float *p4 = p + 4 * pairs, *p5 = p + 5 * pairs;
    for (int64_t b = 0; b < blocks; b += 2) {
        /* six tokens times two blocks of adapters: twelve independent accumulators */
        const float *g = gram + b * pairs * LANES, *h = g + pairs * LANES;
        vf q0 = splat(0.0f), q1 = q0, q2 = q0, q3 = q0, q4 = q0, q5 = q0;
        vf e0 = q0, e1 = q0, e2 = q0, e3 = q0, e4 = q0, e5 = q0;
        for (int64_t k = 0; k < pairs; k++) {
            vf gv = load(g + k * LANES), hv = load(h + k * LANES);
            IN_REGISTER(gv);
            IN_REGISTER(hv);
            GRAM_STEP(p0, q0, e0);
            GRAM_STEP(p1, q1, e1);
            GRAM_STEP(p2, q2, e2);
            GRAM_STEP(p3, q3, e3);
            GRAM_STEP(p4, q4, e4);
            GRAM_STEP(p5, q5, e5);
        }
        const vf first[TOKEN_BLOCK] = {q0, q1, q2, q3, q4, q5}, second[TOKEN_BLOCK] = {e0, e1, e2, e3, e4, e5};
        for (int64_t u = 0; u < TOKEN_BLOCK; u++) {
            consider(first[u], b, c, c_low, adapters, &found[u]);
            consider(second[u], b + 1, c, c_low, adapters, &found[u]);
        }
    }
}

/* The same for one token: eight blocks at a time, then the last pairs of blocks. */
static void score_one(const float *p, int64_t pairs, const float *gram, int64_t blocks, const float *c,
                      const float *c_low, int64_t adapters, best_so_far *found) {
    int64_t b = 0;
    for (; b + 8 <= blocks; b += 8) {
        const float *g = gram + b * pairs * LANES;
        vf q[8];
        for (int64_t i = 0; i < 8; i++) q[i] = splat(0.0f);
        for (int64_t k = 0; k < pairs; k++) {
            vf w = splat(p[k]);
            IN_REGISTER(w);
            for (int64_t i = 0; i < 8; i++) q[i] += w * load(g + (i * pairs + k) * LANES);
        }
        for (int64_t i = 0; i < 8; i++) consider(q[i], b + i, c, c_low, adapters, found);
    }
    for (; b < blocks; b += 2) {
        const float *g = gram + b * pairs * LANES, *h = g + pairs * LANES;
        vf q = splat(0.0f), e = q;
        for (int64_t k = 0; k < pairs; k++) {
            const vf w = splat(p[k]);
            q += w * load(g + k * LANES);
            e += w * load(h + k * LANES);
        }
        consider(q, b, c, c_low, adapters, found);
        consider(e, b + 1, c, c_low, adapters, found);
    }
}

/*
 * x (T, n), a (r, n) and the same packed by tiles (see project()), gram (blocks, P, LANES) with
 * blocks = ceil(N / LANES) rounded up to an even number and padded lanes zero, c and
 * c_low = c - MARGIN |c| (blocks * LANES,) with padded lanes zero. Writes index (T,), and z (T, r)
 * and best (T,) unless they are NULL. Returns 0, 1 when r is too large, 2 when out of memory.
 */
int seqr_select(const float *x, int64_t tokens, int64_t n, const float *a, const float *packed, int64_t r,
                const float *gram,
                const float *c, const float *c_low, int64_t adapters, float *z, int64_t *index, float *best,
                int threads) {
    const int64_t pairs = r * (r + 1) / 2;
    if (pairs > MAX_PAIRS) return 1;
    if (tokens <= 0) return 0;
    if (threads < 1) threads = 1;
    const int64_t blocks = 2 * ((adapters + 2 * LANES - 1) / (2 * LANES));
    /* Each thread gets an equal share, and a share above one block is rounded up to whole blocks. */
    int64_t chunk = (tokens + threads - 1) / threads;
    chunk = chunk > TOKEN_CHUNK ? TOKEN_CHUNK : chunk;
    if (chunk > TOKEN_BLOCK) chunk = (chunk + TOKEN_BLOCK - 1) / TOKEN_BLOCK * TOKEN_BLOCK;
    const int64_t chunks = (tokens + chunk - 1) / chunk;
    int failed = 0;

#pragma omp parallel for schedule(static) num_threads(threads) reduction(| : failed)
    for (int64_t ci = 0; ci < chunks; ci++) {
        const int64_t c0 = ci * chunk;
        const int64_t count = tokens - c0 < chunk ? tokens - c0 : chunk;
        vf *partial = aligned_alloc(sizeof(vf), (size_t)(count * r) * sizeof(vf)); /* vf needs 32-byte alignment */
        float *p = malloc((size_t)(TOKEN_BLOCK * pairs) * sizeof(float));
        float *scratch = z ? NULL : malloc((size_t)(count * r) * sizeof(float));
        if (!partial || !p || (!z && !scratch)) {
            free(partial);
            free(p);
            free(scratch);
            failed |= 1;
            continue;
        }
        float *zc = z ? z + c0 * r : scratch;
        project(x + c0 * n, count, n, a, packed, r, zc, partial);
        for (int64_t t0 = 0; t0 < count; t0 += TOKEN_BLOCK) {
            const int64_t live = count - t0 < TOKEN_BLOCK ? count - t0 : TOKEN_BLOCK;
            best_so_far found[TOKEN_BLOCK];
            for (int64_t u = 0; u < live; u++) {
                found[u] = (best_so_far){-INFINITY, -INFINITY, 0};
                pair_products(zc + (t0 + u) * r, r, p + u * pairs);
            }
            if (live == TOKEN_BLOCK)
                score_six(p, pairs, gram, blocks, c, c_low, adapters, found);
            else
                for (int64_t u = 0; u < live; u++) score_one(p + u * pairs, pairs, gram, blocks, c, c_low, adapters, &found[u]);
            for (int64_t u = 0; u < live; u++) {
                index[c0 + t0 + u] = found[u].arg;
                if (best) best[c0 + t0 + u] = found[u].top;
            }
        }
        free(partial);
        free(p);
        free(scratch);
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
