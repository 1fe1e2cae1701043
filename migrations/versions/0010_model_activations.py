"""model_activations: the history of which version was active when, so that a rollback never toggles

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-10 10:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

# The sentence web/models.py records on the version a rollback took out of service.
ROLLED_BACK = "retired by a rollback"


def upgrade() -> None:
    activations = op.create_table(
        "model_activations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("activated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("rolled_back_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["version_id"], ["model_versions.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_model_activations_version_id"), "model_activations", ["version_id"], unique=False)
    # The history so far, as far as the versions tell it: each one that was ever active at its last promotion, in
    # order; one a rollback took out of service counts as undone (so the first rollback after the upgrade does not
    # put it back).
    versions = sa.table(
        "model_versions", sa.column("id", sa.Integer()), sa.column("promoted_at", sa.DateTime(timezone=True)),
        sa.column("retired_at", sa.DateTime(timezone=True)), sa.column("decision", sa.Text()),
    )
    bind = op.get_bind()
    rows = bind.execute(sa.select(versions.c.id, versions.c.promoted_at, versions.c.retired_at, versions.c.decision)
                        .where(versions.c.promoted_at.is_not(None))
                        .order_by(versions.c.promoted_at, versions.c.id)).all()
    if rows:
        op.bulk_insert(activations, [
            {"version_id": vid, "activated_at": promoted,
             "rolled_back_at": retired if retired is not None and (decision or "").startswith(ROLLED_BACK)
             else None}
            for vid, promoted, retired, decision in rows
        ])


def downgrade() -> None:
    op.drop_index(op.f("ix_model_activations_version_id"), table_name="model_activations")
    op.drop_table("model_activations")
