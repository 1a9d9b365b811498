"""Settings of the WebSocket-to-VNC gateway."""

from pydantic import BaseModel, ConfigDict, Field


class GatewaySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    listen_address: str = "127.0.0.1"
    port: int = Field(8081, ge=0, le=65535)
    path: str = Field("/ws", pattern=r"^/")
    allowed_origins: list[str] = Field(
        default_factory=list, description="exact Origin values (scheme://host:port) browsers may connect from"
    )
    connect_timeout_s: float = Field(5.0, gt=0, le=60)
