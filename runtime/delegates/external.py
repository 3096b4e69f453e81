"""Any external delegate by library path, with its options (TFLite's external delegate API)."""

from __future__ import annotations

import os
from typing import Any

from ..errors import DelegateUnavailable

NAME = "external"
CUSTOM_OPS: tuple[str, ...] = ()


def load(backend: Any, spec: Any) -> Any:
    library = spec.library
    if os.sep in library and not os.path.exists(library):
        raise DelegateUnavailable(f"external delegate library {library} does not exist",
                                  "check delegate_library (--delegate-library)")
    try:
        return backend.load_delegate(library, {k: str(v) for k, v in spec.options.items()})
    except DelegateUnavailable as exc:
        raise DelegateUnavailable(f"external delegate unavailable ({exc.problem})",
                                  "check the library path and its options") from exc
