"""Exception hierarchy: every fmoe error derives from FmoeError."""


class FmoeError(Exception):
    """Base class of all fmoe errors."""


# --- tools (fmoe/tools) ---------------------------------------------------------------------------------------
class ToolError(FmoeError):
    """A tool could not be defined, found, or called."""


class ToolDefinitionError(ToolError):
    """A function cannot become a tool (unsupported signature, bad schema, ...)."""


class ToolArgumentError(ToolError):
    """Arguments given to a tool do not validate against its parameters."""


class ToolNotFoundError(ToolError):
    """A tool spec (built-in name, module:function, file) names nothing that exists."""


class WorkspaceError(ToolError):
    """A file tool was asked for a path outside its workspace, or over a size limit."""


# --- task files (fmoe/agent/taskfile.py) -----------------------------------------------------------------------
class TaskFileError(FmoeError):
    """A task file is malformed; the message names the file, line and field."""


# --- engine (fmoe/engine) --------------------------------------------------------------------------------------
class ConfigError(FmoeError):
    """A model config.json is unsupported or lacks a field."""


class CheckpointError(FmoeError):
    """A checkpoint tensor is missing, has the wrong shape or dtype, or its file is truncated."""


class BackendError(FmoeError):
    """An unknown or unavailable compute backend was asked for."""


# --- streaming layout and expert store (fmoe/storage/stream_layout.py, expert_store.py) -------------------------
class LayoutError(CheckpointError):
    """A streaming layout directory is missing, incomplete, of an unknown version, or inconsistent."""


class ExpertReadError(FmoeError):
    """An expert could not be read (I/O error, short read); names the layer, expert, file and byte offset."""

    def __init__(self, message: str, *, layer: int | None = None, expert: int | None = None,
                 file: str | None = None, offset: int | None = None):
        super().__init__(message)
        self.layer, self.expert, self.file, self.offset = layer, expert, file, offset


class ChecksumError(ExpertReadError):
    """An expert's bytes do not match the checksum recorded in the manifest (read with verify=True)."""


class ToolFailed(ToolError):
    """Raised by a tool to return an error result whose content is exactly this message (no exception prefix)."""
