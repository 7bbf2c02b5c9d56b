"""Add retention policies, removal requests and the job lock

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04

Retention policies (per tenant and per silo), removal requests, the job lock and the retention run
log, plus the base model source of a library so a scheduled retrain can load it. Reviewed after
autogeneration; datetimes are naive UTC as in 0001.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('job_locks',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('holder', sa.String(length=64), nullable=False),
    sa.Column('host', sa.String(length=255), nullable=False),
    sa.Column('pid', sa.Integer(), nullable=False),
    sa.Column('acquired_at', sa.DateTime(), nullable=False),
    sa.Column('expires_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_job_locks'))
    )
    op.create_table('retention_runs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('tenant_id', sa.Integer(), nullable=True),
    sa.Column('actor', sa.String(length=300), nullable=False),
    sa.Column('status', sa.Enum('running', 'completed', 'failed', 'interrupted', name='runstatus', native_enum=False, create_constraint=True, length=32), nullable=False),
    sa.Column('started_at', sa.DateTime(), nullable=False),
    sa.Column('finished_at', sa.DateTime(), nullable=True),
    sa.Column('summary', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_retention_runs_tenant_id_tenants')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_retention_runs'))
    )
    with op.batch_alter_table('retention_runs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_retention_runs_status'), ['status'], unique=False)
        batch_op.create_index(batch_op.f('ix_retention_runs_tenant_id'), ['tenant_id'], unique=False)

    op.create_table('retention_policies',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('tenant_id', sa.Integer(), nullable=False),
    sa.Column('silo_id', sa.Integer(), nullable=True),
    sa.Column('max_age_seconds', sa.Integer(), nullable=True),
    sa.Column('legal_hold', sa.Boolean(), nullable=False),
    sa.Column('updated_by', sa.Integer(), nullable=True),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['silo_id'], ['silos.id'], name=op.f('fk_retention_policies_silo_id_silos')),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_retention_policies_tenant_id_tenants')),
    sa.ForeignKeyConstraint(['updated_by'], ['principals.id'], name=op.f('fk_retention_policies_updated_by_principals'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_retention_policies')),
    sa.UniqueConstraint('tenant_id', 'silo_id', name=op.f('uq_retention_policies_tenant_id_silo_id'))
    )
    with op.batch_alter_table('retention_policies', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_retention_policies_silo_id'), ['silo_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_retention_policies_tenant_id'), ['tenant_id'], unique=False)

    op.create_table('removal_requests',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('tenant_id', sa.Integer(), nullable=False),
    sa.Column('silo_id', sa.Integer(), nullable=False),
    sa.Column('document_id', sa.Integer(), nullable=False),
    sa.Column('reason', sa.String(length=300), nullable=True),
    sa.Column('requested_by', sa.Integer(), nullable=True),
    sa.Column('requested_at', sa.DateTime(), nullable=False),
    sa.Column('completed_at', sa.DateTime(), nullable=True),
    sa.ForeignKeyConstraint(['document_id'], ['documents.id'], name=op.f('fk_removal_requests_document_id_documents')),
    sa.ForeignKeyConstraint(['requested_by'], ['principals.id'], name=op.f('fk_removal_requests_requested_by_principals'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['silo_id'], ['silos.id'], name=op.f('fk_removal_requests_silo_id_silos')),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_removal_requests_tenant_id_tenants')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_removal_requests'))
    )
    with op.batch_alter_table('removal_requests', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_removal_requests_document_id'), ['document_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_removal_requests_tenant_id'), ['tenant_id'], unique=False)

    with op.batch_alter_table('libraries', schema=None) as batch_op:
        batch_op.add_column(sa.Column('base_model_source', sa.String(length=1000), nullable=True))



def downgrade() -> None:
    with op.batch_alter_table('libraries', schema=None) as batch_op:
        batch_op.drop_column('base_model_source')

    with op.batch_alter_table('removal_requests', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_removal_requests_tenant_id'))
        batch_op.drop_index(batch_op.f('ix_removal_requests_document_id'))

    op.drop_table('removal_requests')
    with op.batch_alter_table('retention_policies', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_retention_policies_tenant_id'))
        batch_op.drop_index(batch_op.f('ix_retention_policies_silo_id'))

    op.drop_table('retention_policies')
    with op.batch_alter_table('retention_runs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_retention_runs_tenant_id'))
        batch_op.drop_index(batch_op.f('ix_retention_runs_status'))

    op.drop_table('retention_runs')
    op.drop_table('job_locks')
