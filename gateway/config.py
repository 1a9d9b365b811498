"""Settings of the WebSocket-to-VNC gateway."""

from pydantic import BaseModel, ConfigDict, Field


class GatewaySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    listen_address: str = Field("127.0.0.1", description="address the WebSocket endpoint listens on")
    port: int = Field(8081, ge=0, le=65535, description="TCP port of the WebSocket endpoint")
    path: str = Field("/ws", pattern=r"^/", description="URL path of the WebSocket endpoint")
    allowed_origins: list[str] = Field(
        default_factory=list, description="exact Origin values (scheme://host:port) browsers may connect from"
    )
    connect_timeout_s: float = Field(
        5.0, gt=0, le=60, description="time allowed to reach a desktop's display"
    )
