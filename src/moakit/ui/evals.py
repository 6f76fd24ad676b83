"""The eval report viewer's API: ``moa eval`` results directories under one operator-chosen root.

A results directory (see docs/eval.md) holds ``summary.json``, ``records/<system>.<hash>.jsonl``
and ``plots/*.png``. The root is the operator's (a server flag); a request only ever names a
directory or a plot that the listing found, so no request can reach another file.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from moakit.ui.routes import api_error, authorized

MAX_ITEMS_PAGE = 200


def inside(path: Path, root: Path) -> bool:
    """Whether ``path``, symlinks followed, is ``root`` or lies under it. A link inside the
    results root that points out of it (at ``/etc``, a home directory) is treated as absent."""
    try:
        return path.resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError):  # a broken or looping link
        return False


def result_dirs(root: Path) -> dict[str, Path]:
    """Results directories by name: ``root`` itself and its children that hold a summary,
    never reaching out of ``root`` through a symlink."""
    found: dict[str, Path] = {}
    if _file_in(root / "summary.json", root):
        found[root.name or "results"] = root
    if root.is_dir():
        for child in sorted(root.iterdir()):
            if child.is_dir() and inside(child, root) and _file_in(child / "summary.json", root):
                found[child.name] = child
    return found


def _file_in(path: Path, root: Path) -> bool:
    return path.is_file() and inside(path, root)


def _plots(directory: Path, root: Path) -> list[str]:
    plots = directory / "plots"
    if not plots.is_dir() or not inside(plots, root):
        return []
    return sorted(p.name for p in plots.glob("*.png") if _file_in(p, root))


def _summary(directory: Path) -> dict[str, Any]:
    data = json.loads((directory / "summary.json").read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {"summary": data}


def side_by_side(directory: Path, root: Path) -> tuple[list[str], list[dict[str, Any]]]:
    """Every item with each system's record next to the others': ``(systems, items)``."""
    systems: list[str] = []
    items: dict[str, dict[str, Any]] = {}
    records = directory / "records"
    paths = sorted(records.glob("*.jsonl")) if inside(records, root) else []
    for path in (p for p in paths if _file_in(p, root)):
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a killed run: the runner retries that item on resume
            if not isinstance(record, dict):
                continue
            system = str(record.get("system") or path.name.split(".", 1)[0])
            if system not in systems:
                systems.append(system)
            item_id = str(record.get("item_id", ""))
            row = items.setdefault(item_id, {"item_id": item_id, "systems": {}})
            score = record.get("score")
            row["systems"][system] = {
                "final": record.get("final"),
                "score": score.get("value") if isinstance(score, dict) else score,
                "error": record.get("error"),
                "latency_s": record.get("latency_s"),
            }
    return systems, list(items.values())


def eval_routes(root: Path, *, check_auth: Callable[[Request], None]) -> list[BaseRoute]:
    """``/ui/api/evals``, ``/ui/api/evals/{name}``, ``/ui/api/evals/{name}/items`` and
    ``/ui/api/evals/{name}/plots/{file}``, over the results directories under ``root``."""

    def find(name: str) -> Path | None:
        return result_dirs(root).get(name)

    async def listing(request: Request) -> Response:
        if (denied := authorized(check_auth, request)) is not None:
            return denied
        dirs = await run_in_threadpool(result_dirs, root)
        out = []
        for name, directory in dirs.items():
            summary = await run_in_threadpool(_summary, directory)
            out.append(
                {
                    "name": name,
                    "dataset": summary.get("dataset"),
                    "scorer": summary.get("scorer"),
                    "systems": len(summary.get("systems") or []),
                }
            )
        return JSONResponse({"object": "list", "data": out})

    async def detail(request: Request) -> Response:
        if (denied := authorized(check_auth, request)) is not None:
            return denied
        directory = await run_in_threadpool(find, request.path_params["name"])
        if directory is None:
            return api_error(404, "no such results directory", "name", "not_found")
        summary = await run_in_threadpool(_summary, directory)
        plots = await run_in_threadpool(_plots, directory, root)
        return JSONResponse(
            {"name": request.path_params["name"], "summary": summary, "plots": plots}
        )

    async def items(request: Request) -> Response:
        if (denied := authorized(check_auth, request)) is not None:
            return denied
        directory = await run_in_threadpool(find, request.path_params["name"])
        if directory is None:
            return api_error(404, "no such results directory", "name", "not_found")
        try:
            offset = max(0, int(request.query_params.get("offset", "0")))
            limit = min(MAX_ITEMS_PAGE, max(1, int(request.query_params.get("limit", "50"))))
        except ValueError:
            return api_error(400, "offset and limit must be integers", "offset", "invalid_value")
        systems, rows = await run_in_threadpool(side_by_side, directory, root)
        # Columns in the summary's order (the reference system first, as the report has it).
        order = [
            s.get("name")
            for s in (await run_in_threadpool(_summary, directory)).get("systems") or []
            if isinstance(s, dict)
        ]
        systems.sort(key=lambda s: order.index(s) if s in order else len(order))
        return JSONResponse(
            {"systems": systems, "total": len(rows), "data": rows[offset : offset + limit]}
        )

    async def plot(request: Request) -> Response:
        if (denied := authorized(check_auth, request)) is not None:
            return denied
        directory = await run_in_threadpool(find, request.path_params["name"])
        name = request.path_params["file"]
        if directory is None or name not in await run_in_threadpool(_plots, directory, root):
            return api_error(404, "no such plot", "file", "not_found")
        return FileResponse(directory / "plots" / name, media_type="image/png")

    return [
        Route("/ui/api/evals", listing, methods=["GET"]),
        Route("/ui/api/evals/{name}", detail, methods=["GET"]),
        Route("/ui/api/evals/{name}/items", items, methods=["GET"]),
        Route("/ui/api/evals/{name}/plots/{file}", plot, methods=["GET"]),
    ]
