"""Create the registry schema

Revision ID: 0001
Revises:
Create Date: 2026-12-04

The whole schema of the first release; reviewed after autogeneration. Datetimes are naive UTC
(the models convert), enums are strings with CHECK constraints.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('audit_events',
    sa.Column('id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('occurred_at', sa.DateTime(), nullable=False),
    sa.Column('tenant_id', sa.Integer(), nullable=True),
    sa.Column('actor', sa.String(length=300), nullable=False),
    sa.Column('action', sa.String(length=64), nullable=False),
    sa.Column('target', sa.String(length=300), nullable=False),
    sa.Column('outcome', sa.String(length=16), nullable=False),
    sa.Column('detail', sa.Text(), nullable=False),
    sa.Column('master_key_version', sa.Integer(), nullable=False),
    sa.Column('prev_hash', sa.String(length=64), nullable=False),
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_events'))
    )
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_audit_events_tenant_id'), ['tenant_id'], unique=False)

    op.create_table('registry_state',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('generation', sa.Integer(), nullable=False),
    sa.Column('audit_head', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_registry_state'))
    )
    op.create_table('tenants',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tenants')),
    sa.UniqueConstraint('name', name=op.f('uq_tenants_name'))
    )
    op.create_table('groups',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('tenant_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_groups_tenant_id_tenants')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_groups')),
    sa.UniqueConstraint('tenant_id', 'name', name=op.f('uq_groups_tenant_id_name'))
    )
    with op.batch_alter_table('groups', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_groups_tenant_id'), ['tenant_id'], unique=False)

    op.create_table('libraries',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('tenant_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('base_model_fingerprint', sa.String(length=128), nullable=False),
    sa.Column('target_modules', sa.JSON(), nullable=False),
    sa.Column('rank', sa.Integer(), nullable=False),
    sa.Column('alpha', sa.Float(), nullable=False),
    sa.Column('seed', sa.Integer(), nullable=False),
    sa.Column('shared_a', sa.LargeBinary(), nullable=False),
    sa.Column('a_fingerprint', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_libraries_tenant_id_tenants')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_libraries')),
    sa.UniqueConstraint('tenant_id', 'name', name=op.f('uq_libraries_tenant_id_name'))
    )
    with op.batch_alter_table('libraries', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_libraries_tenant_id'), ['tenant_id'], unique=False)

    op.create_table('principals',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('tenant_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('kind', sa.Enum('user', 'service', name='principalkind', native_enum=False, create_constraint=True, length=32), nullable=False),
    sa.Column('role', sa.Enum('member', 'tenant_admin', 'registry_admin', name='role', native_enum=False, create_constraint=True, length=32), nullable=False),
    sa.Column('disabled', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_principals_tenant_id_tenants')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_principals')),
    sa.UniqueConstraint('tenant_id', 'name', name=op.f('uq_principals_tenant_id_name'))
    )
    with op.batch_alter_table('principals', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_principals_tenant_id'), ['tenant_id'], unique=False)

    op.create_table('silos',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('tenant_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_silos_tenant_id_tenants')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_silos')),
    sa.UniqueConstraint('tenant_id', 'name', name=op.f('uq_silos_tenant_id_name'))
    )
    with op.batch_alter_table('silos', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_silos_tenant_id'), ['tenant_id'], unique=False)

    op.create_table('adapter_versions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('tenant_id', sa.Integer(), nullable=False),
    sa.Column('silo_id', sa.Integer(), nullable=False),
    sa.Column('library_id', sa.Integer(), nullable=False),
    sa.Column('number', sa.Integer(), nullable=False),
    sa.Column('status', sa.Enum('training', 'active', 'retired', 'destroyed', name='adapterstatus', native_enum=False, create_constraint=True, length=32), nullable=False),
    sa.Column('manifest', sa.JSON(), nullable=False),
    sa.Column('config', sa.JSON(), nullable=False),
    sa.Column('metrics', sa.JSON(), nullable=False),
    sa.Column('created_by', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('activated_at', sa.DateTime(), nullable=True),
    sa.Column('retired_at', sa.DateTime(), nullable=True),
    sa.Column('destroyed_at', sa.DateTime(), nullable=True),
    sa.ForeignKeyConstraint(['created_by'], ['principals.id'], name=op.f('fk_adapter_versions_created_by_principals'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['library_id'], ['libraries.id'], name=op.f('fk_adapter_versions_library_id_libraries')),
    sa.ForeignKeyConstraint(['silo_id'], ['silos.id'], name=op.f('fk_adapter_versions_silo_id_silos')),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_adapter_versions_tenant_id_tenants')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_adapter_versions')),
    sa.UniqueConstraint('silo_id', 'library_id', 'number', name=op.f('uq_adapter_versions_silo_id_library_id_number'))
    )
    with op.batch_alter_table('adapter_versions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_adapter_versions_library_id'), ['library_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_adapter_versions_silo_id'), ['silo_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_adapter_versions_status'), ['status'], unique=False)
        batch_op.create_index(batch_op.f('ix_adapter_versions_tenant_id'), ['tenant_id'], unique=False)

    op.create_table('documents',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('tenant_id', sa.Integer(), nullable=False),
    sa.Column('silo_id', sa.Integer(), nullable=False),
    sa.Column('added_at', sa.DateTime(), nullable=False),
    sa.Column('expires_at', sa.DateTime(), nullable=True),
    sa.Column('removed_at', sa.DateTime(), nullable=True),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['silo_id'], ['silos.id'], name=op.f('fk_documents_silo_id_silos')),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_documents_tenant_id_tenants')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_documents'))
    )
    with op.batch_alter_table('documents', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_documents_expires_at'), ['expires_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_documents_silo_id'), ['silo_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_documents_tenant_id'), ['tenant_id'], unique=False)

    op.create_table('grants',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('tenant_id', sa.Integer(), nullable=False),
    sa.Column('silo_id', sa.Integer(), nullable=False),
    sa.Column('principal_id', sa.Integer(), nullable=True),
    sa.Column('group_id', sa.Integer(), nullable=True),
    sa.Column('permission', sa.Enum('use', 'train', 'admin', name='permission', native_enum=False, create_constraint=True, length=32), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.CheckConstraint('(principal_id IS NULL) <> (group_id IS NULL)', name=op.f('ck_grants_one_grantee')),
    sa.ForeignKeyConstraint(['group_id'], ['groups.id'], name=op.f('fk_grants_group_id_groups'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['principal_id'], ['principals.id'], name=op.f('fk_grants_principal_id_principals'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['silo_id'], ['silos.id'], name=op.f('fk_grants_silo_id_silos')),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_grants_tenant_id_tenants')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_grants'))
    )
    with op.batch_alter_table('grants', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_grants_group_id'), ['group_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_grants_principal_id'), ['principal_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_grants_silo_id'), ['silo_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_grants_tenant_id'), ['tenant_id'], unique=False)

    op.create_table('memberships',
    sa.Column('group_id', sa.Integer(), nullable=False),
    sa.Column('principal_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['group_id'], ['groups.id'], name=op.f('fk_memberships_group_id_groups'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['principal_id'], ['principals.id'], name=op.f('fk_memberships_principal_id_principals'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('group_id', 'principal_id', name=op.f('pk_memberships'))
    )
    with op.batch_alter_table('memberships', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_memberships_principal_id'), ['principal_id'], unique=False)

    op.create_table('tokens',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('principal_id', sa.Integer(), nullable=False),
    sa.Column('digest', sa.String(length=64), nullable=False),
    sa.Column('public_id', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('expires_at', sa.DateTime(), nullable=True),
    sa.Column('revoked_at', sa.DateTime(), nullable=True),
    sa.Column('last_used_at', sa.DateTime(), nullable=True),
    sa.ForeignKeyConstraint(['principal_id'], ['principals.id'], name=op.f('fk_tokens_principal_id_principals')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tokens')),
    sa.UniqueConstraint('digest', name=op.f('uq_tokens_digest')),
    sa.UniqueConstraint('public_id', name=op.f('uq_tokens_public_id'))
    )
    with op.batch_alter_table('tokens', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_tokens_principal_id'), ['principal_id'], unique=False)

    op.create_table('data_keys',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('key_ref', sa.String(length=32), nullable=False),
    sa.Column('tenant_id', sa.Integer(), nullable=False),
    sa.Column('silo_id', sa.Integer(), nullable=False),
    sa.Column('adapter_version_id', sa.Integer(), nullable=True),
    sa.Column('document_id', sa.Integer(), nullable=True),
    sa.Column('master_key_version', sa.Integer(), nullable=False),
    sa.Column('wrap_nonce', sa.LargeBinary(), nullable=False),
    sa.Column('wrapped_key', sa.LargeBinary(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.CheckConstraint('(adapter_version_id IS NULL) <> (document_id IS NULL)', name=op.f('ck_data_keys_one_owner')),
    sa.ForeignKeyConstraint(['adapter_version_id'], ['adapter_versions.id'], name=op.f('fk_data_keys_adapter_version_id_adapter_versions')),
    sa.ForeignKeyConstraint(['document_id'], ['documents.id'], name=op.f('fk_data_keys_document_id_documents')),
    sa.ForeignKeyConstraint(['silo_id'], ['silos.id'], name=op.f('fk_data_keys_silo_id_silos')),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_data_keys_tenant_id_tenants')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_data_keys')),
    sa.UniqueConstraint('adapter_version_id', name=op.f('uq_data_keys_adapter_version_id')),
    sa.UniqueConstraint('document_id', name=op.f('uq_data_keys_document_id')),
    sa.UniqueConstraint('key_ref', name=op.f('uq_data_keys_key_ref'))
    )
    with op.batch_alter_table('data_keys', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_data_keys_master_key_version'), ['master_key_version'], unique=False)
        batch_op.create_index(batch_op.f('ix_data_keys_tenant_id'), ['tenant_id'], unique=False)

    op.create_table('blobs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('data_key_id', sa.Integer(), nullable=False),
    sa.Column('field', sa.Enum('factors', 'content', 'metadata', name='blobfield', native_enum=False, create_constraint=True, length=32), nullable=False),
    sa.Column('nonce', sa.LargeBinary(), nullable=False),
    sa.Column('ciphertext', sa.LargeBinary(), nullable=False),
    sa.ForeignKeyConstraint(['data_key_id'], ['data_keys.id'], name=op.f('fk_blobs_data_key_id_data_keys'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_blobs')),
    sa.UniqueConstraint('data_key_id', 'field', name=op.f('uq_blobs_data_key_id_field'))
    )
    with op.batch_alter_table('blobs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_blobs_data_key_id'), ['data_key_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('blobs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_blobs_data_key_id'))

    op.drop_table('blobs')
    with op.batch_alter_table('data_keys', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_data_keys_tenant_id'))
        batch_op.drop_index(batch_op.f('ix_data_keys_master_key_version'))

    op.drop_table('data_keys')
    with op.batch_alter_table('tokens', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_tokens_principal_id'))

    op.drop_table('tokens')
    with op.batch_alter_table('memberships', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_memberships_principal_id'))

    op.drop_table('memberships')
    with op.batch_alter_table('grants', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_grants_tenant_id'))
        batch_op.drop_index(batch_op.f('ix_grants_silo_id'))
        batch_op.drop_index(batch_op.f('ix_grants_principal_id'))
        batch_op.drop_index(batch_op.f('ix_grants_group_id'))

    op.drop_table('grants')
    with op.batch_alter_table('documents', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_documents_tenant_id'))
        batch_op.drop_index(batch_op.f('ix_documents_silo_id'))
        batch_op.drop_index(batch_op.f('ix_documents_expires_at'))

    op.drop_table('documents')
    with op.batch_alter_table('adapter_versions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_adapter_versions_tenant_id'))
        batch_op.drop_index(batch_op.f('ix_adapter_versions_status'))
        batch_op.drop_index(batch_op.f('ix_adapter_versions_silo_id'))
        batch_op.drop_index(batch_op.f('ix_adapter_versions_library_id'))

    op.drop_table('adapter_versions')
    with op.batch_alter_table('silos', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_silos_tenant_id'))

    op.drop_table('silos')
    with op.batch_alter_table('principals', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_principals_tenant_id'))

    op.drop_table('principals')
    with op.batch_alter_table('libraries', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_libraries_tenant_id'))

    op.drop_table('libraries')
    with op.batch_alter_table('groups', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_groups_tenant_id'))

    op.drop_table('groups')
    op.drop_table('tenants')
    op.drop_table('registry_state')
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_audit_events_tenant_id'))

    op.drop_table('audit_events')

