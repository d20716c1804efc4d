"""The static type of a validated configuration, for annotations: ``cfg: Config``.

``schema.validate`` returns a pydantic model built at run time from the flag table and the running task's key
models, so which keys a section holds is known only then, and pydantic checks them there. What is static is the
shape: six sections, read and set as attributes, and the dump that ``resolved_config.yaml`` holds. These
protocols state that shape without restating any key (a key has one home: its flag or its key model).
"""

from __future__ import annotations

from typing import Any, Protocol


class Section(Protocol):
    """One section (run, training, model, data, eval, json): its keys as attributes of any type."""

    def __getattr__(self, name: str) -> Any: ...

    def __setattr__(self, name: str, value: Any) -> None: ...

    def model_dump(self, **kwargs: Any) -> dict[str, Any]: ...


class Config(Protocol):
    """A validated configuration (the return type of ``Engineering.config.schema.validate``)."""

    run: Section
    training: Section
    model: Section
    data: Section
    eval: Section
    paths: Section  # the dataNpath JSON (the key 'json'; BaseModel.json would shadow it)

    def model_dump(self, **kwargs: Any) -> dict[str, Any]: ...
