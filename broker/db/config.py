"""Database settings shared by the broker and the gateway."""

from pydantic import BaseModel, ConfigDict, Field


class DatabaseSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        "sqlite:////var/lib/smartwork-vdi/vdi.db", description="SQLAlchemy URL (sqlite or postgresql)"
    )
    pool_size: int = Field(5, ge=1, le=100, description="database connections per process")
