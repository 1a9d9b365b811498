"""Settings of the broker web application and of desktop pools."""

from pydantic import BaseModel, ConfigDict, Field, SecretStr


class BrokerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    listen_address: str = Field("127.0.0.1", description="address the portal and API listen on")
    port: int = Field(8080, ge=0, le=65535, description="TCP port of the portal and API")
    cookie_secret: SecretStr = Field(min_length=32, description="key that signs portal session cookies")
    gateway_url: str = Field(
        "ws://127.0.0.1:8081/ws",
        pattern=r"^wss?://",
        description="WebSocket URL browsers use to reach the gateway",
    )
    session_lifetime_s: int = Field(8 * 3600, ge=60, description="portal login lifetime")
    console_token_ttl_s: int = Field(
        30, ge=1, le=30, description="lifetime of a console token (at most 30 s)"
    )
    default_language: str = Field(
        "ko", pattern=r"^(ko|en)$", description="portal language when the browser states none"
    )


class PoolSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,40}$")
    display_name: str = Field(description="name users see on the portal")
    image: str = Field("demo", description="name of the golden image the pool's desktops are cloned from")
    groups: list[str] = Field(min_length=1, description="directory groups entitled to the pool")
    memory_mib: int = Field(256, ge=64, le=1024 * 1024, description="memory of each desktop")
    vcpus: int = Field(1, ge=1, le=256, description="virtual CPUs of each desktop")
