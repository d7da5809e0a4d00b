"""The command line: `forgebuild [TARGET...]` builds; other verbs inspect and tidy.

The layer on top: it may import anything. One module per verb group (`build`, `query`, `tidy`,
`cache`, `keys`, `join`, `lock`, `verify`, `diff`, `exp`, `metrics`, `mcp`, `init`; `diff` draws on
`diff_resolve`, `diff_changes`, `diff_render` and `tensors`, `lock` and `verify` on `integrity`,
`build` on `search` for a search's proposals), the arguments
(`arguments`), the loaded project (`session`), the entry point (`entry`) and the reporter.

Exit codes: 0 success, 1 a build failed (or a target is not built, for `path`),
2 bad usage, a bad Forgefile or a corrupt cache. Never a traceback for those.

A no-op build stays on the standard library and xxhash: the plan comes from
.forge/plan.json when the Forgefile is unchanged, and pydantic, networkx,
fsspec and rich are imported only when something must be validated, drawn or
built.
"""
from forgebuild.cli.entry import main
from forgebuild.cli.session import Session

__all__ = ["main", "Session"]
