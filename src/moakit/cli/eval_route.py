"""``moa eval route``: train the ``knn`` router on one split of an eval's records and judge it
on another (``moakit.eval.routing``)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from moakit.errors import ConfigError
from moakit.eval.datasets import load_dataset
from moakit.eval.results import ResultsDir
from moakit.eval.routing import examples, judge
from moakit.routing import KnnRouter


def _split(text: str, what: str) -> tuple[int, int]:
    start, sep, end = text.partition(":")
    if not sep or not start.isdigit() or not end.isdigit() or int(end) <= int(start):
        raise click.BadParameter(f"{what} is START:END item offsets, e.g. 0:100", param_hint=what)
    return int(start), int(end)


@click.command("route")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    required=True,
    help="The results directory of a `moa eval run`.",
)
@click.option("--system", required=True, help="The MoA system whose first layer to learn.")
@click.option("--train", required=True, help="Training items, START:END offsets.")
@click.option("--test", "test", required=True, help="Held-out items, START:END offsets.")
@click.option(
    "--save",
    type=click.Path(path_type=Path),
    default=None,
    help="Write the trained router here (a stack's [router] options.file).",
)
@click.option("--k", type=int, default=5, show_default=True)
@click.option("--margin", type=float, default=0.0, show_default=True)
@click.option("--min-members", type=int, default=1, show_default=True)
def route_cmd(
    out_dir: Path,
    system: str,
    train: str,
    test: str,
    save: Path | None,
    k: int,
    margin: float,
    min_members: int,
) -> None:
    """Train the knn router on TRAIN items of an eval and judge it on TEST items."""
    results = ResultsDir(out_dir, warn=lambda message: click.echo(message, err=True))
    manifest = results.manifest()
    if manifest is None:
        raise click.ClickException(f"{out_dir} has no eval results")
    info = next((s for s in manifest.systems if s.name == system), None)
    if info is None:
        names = ", ".join(s.name for s in manifest.systems)
        raise click.ClickException(f"no system {system!r} in {out_dir} (there: {names})")
    records = results.records(info)
    data_dir = Path(manifest.data_dir) if manifest.data_dir else None
    items = load_dataset(manifest.dataset, data_dir=data_dir).items
    (a, b), (c, d) = _split(train, "--train"), _split(test, "--test")
    if max(a, c) < min(b, d):
        raise click.BadParameter("the splits overlap", param_hint="--test")
    try:
        router = KnnRouter(
            examples(items[a:b], records), k=k, margin=margin, min_members=min_members
        )
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    held_out = examples(items[c:d], records)
    if not held_out:
        raise click.ClickException(f"no scored records among items {test}")
    judged = judge(router, held_out)
    if save is not None:
        save.write_text(json.dumps(router.to_json(), ensure_ascii=False), encoding="utf-8")
        click.echo(f"wrote {save}", err=True)
    click.echo(json.dumps({"train": train, "test": test, **judged.to_json()}, indent=2))
