"""Settings of the golden image cache."""

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

# The image a pool boots when its settings name none: the built-in demo image (images/built_in.py).
DEFAULT_IMAGE = "demo"


class ImageSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cache_dir: Path = Field(
        Path("/var/cache/smartwork-vdi/images"), description="built images, keyed by input hash"
    )
