"""`iad annotations ...`: annotation sets from the command line (the Annotation sets page does the same).

- `iad annotations sets [--dataset K --root R]`: the sets, with their ground-truth versions;
- `iad annotations make-set --dataset K --root R --name N [--category C ...]`: freeze the current annotations;
- `iad annotations export --dataset K --root R --set N --out FILE.zip [--no-train]`: MVTec AD layout zip;
- `iad annotations import --dataset K --root R FILE.zip [--name N]`: new versions + a set (all or nothing);
- `iad annotations rescore --set N [--dataset K --root R] [--job ID ...] [--inline|--dry-run]`: metrics of finished
  runs against the set, from their stored maps (on a worker, or here).
"""

from __future__ import annotations

import argparse


def _root(args: argparse.Namespace) -> str | None:
    from pathlib import Path

    return None if args.root is None else str(Path(args.root).expanduser().absolute())


def cmd_sets(args: argparse.Namespace) -> int:
    from db.annotations import list_sets

    sets = list_sets(args.dataset, _root(args))
    if not sets:
        print("no annotation sets")
        return 0
    for s in sets:
        print(f"{s.id}\t{s.name}\t{s.gt_version}\t{s.n_changed} changed\t{s.kind} {s.root}\t{','.join(s.categories)}"
              f"\t{s.created_by} {s.created_at:%Y-%m-%d %H:%M}")
    return 0


def _acting(permission: str, what: str):  # noqa: ANN202 (db.accounts.Actor)
    """The CLI's actor (`db.accounts.cli_actor`: IAD_TOKEN's owner where sign-in is on), if allowed."""
    from db import accounts

    actor = accounts.cli_actor()
    accounts.require(actor, permission, what)
    return actor


def cmd_make_set(args: argparse.Namespace) -> int:
    from db.accounts import audit
    from db.annotations import create_set

    actor = _acting("annotate", "make annotation sets")
    info = create_set(args.dataset, _root(args), args.name, args.category or None, author=actor.name,
                      note=args.note or "")
    audit(actor.name, "annotation set made", info.name, {"root": _root(args)})
    print(f"annotation set {info.name!r} (id {info.id}): {info.n_changed} image(s) differ from the dataset; "
          f"ground-truth version {info.gt_version}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from db.accounts import audit
    from db.annotations import export_set, get_set

    actor = _acting("export", "export")
    info = get_set(args.set, args.dataset, _root(args))
    manifest = export_set(info.id, args.out, include_train=not args.no_train)
    audit(actor.name, "annotation set exported", info.name, {"out": str(args.out)})
    print(f"wrote {args.out}: {len(manifest['entries'])} test images of {', '.join(manifest['categories'])}, "
          f"ground-truth version {manifest['gt_version']}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from db.accounts import audit
    from db.annotations import import_set

    actor = _acting("annotate", "import annotation sets")
    result = import_set(args.dataset, _root(args), args.file, name=args.name, author=actor.name)
    audit(actor.name, "annotation set imported", str(args.file), {"root": _root(args)})
    print(f"imported {result.set.name!r} (id {result.set.id}): {result.new_versions} new version(s), {result.unchanged} "
          f"image(s) already as in the file; ground-truth version {result.set.gt_version}")
    return 0


def cmd_rescore(args: argparse.Namespace) -> int:
    from db.annotations import get_set
    from workers.annotations import rescore_against_set

    _acting("launch", "re-score runs")
    info = get_set(args.set, args.dataset, _root(args))
    jobs = args.job or None
    if args.inline or args.dry_run:
        def report(item) -> None:  # noqa: ANN001 (workers.rescore.RescoreItem)
            extra = f" ({item.rows} rows)" if item.status == "stored" else ""
            print(f"job {item.job_id} {item.category}: {item.status}{extra}", flush=True)

        items = rescore_against_set(info.id, jobs, dry_run=args.dry_run, report=report)
        skipped = sum(1 for i in items if i.status.startswith("skipped"))
        print(f"{'would re-score' if args.dry_run else 're-scored'} "
              f"{sum(1 for i in items if i.status in ('stored', 'to do'))} categor(ies) against {info.gt_version}; "
              f"{skipped} skipped")
        return 1 if skipped else 0
    pending = [i for i in rescore_against_set(info.id, jobs, dry_run=True) if i.status == "to do"]
    if not pending:
        print(f"nothing to re-score: every finished run on {info.kind} {info.root} has metrics against {info.gt_version}")
        return 0
    from workers.celery_app import submit_rescore_annotations

    task = submit_rescore_annotations(info.id, jobs)
    print(f"sent {task} to the cpu queue: a worker re-scores {len(pending)} categor(ies) against {info.name!r} "
          f"({info.gt_version})")
    return 0


def add_annotation_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("annotations", help="annotation sets: list, make, export/import (MVTec layout), re-score runs")
    asub = p.add_subparsers(dest="annotations_command")

    def dataset_args(q: argparse.ArgumentParser, required: bool) -> None:
        q.add_argument("--dataset", default="folder" if required else None,
                       help="dataset kind (mvtec, btad, folder, demo)" + (" (default folder)" if required else ""))
        q.add_argument("--root", required=required, help="the dataset root folder")

    q = asub.add_parser("sets", help="list annotation sets")
    dataset_args(q, False)
    q.set_defaults(func=cmd_sets)

    q = asub.add_parser("make-set", help="freeze the current annotations of a dataset as a named ground-truth version")
    dataset_args(q, True)
    q.add_argument("--name", required=True)
    q.add_argument("--category", action="append", help="only these categories (repeatable; default all)")
    q.add_argument("--note")
    q.set_defaults(func=cmd_make_set)

    q = asub.add_parser("export", help="write an annotation set as a zip in MVTec AD layout")
    dataset_args(q, False)
    q.add_argument("--set", required=True, help="set name, id or ground-truth version")
    q.add_argument("--out", required=True, help="the zip file to write")
    q.add_argument("--no-train", action="store_true", help="leave out the training images")
    q.set_defaults(func=cmd_export)

    q = asub.add_parser("import", help="import an annotation set (zip or folder in MVTec AD layout)")
    dataset_args(q, True)
    q.add_argument("file")
    q.add_argument("--name", help="the set's name (default: the name in the manifest)")
    q.set_defaults(func=cmd_import)

    q = asub.add_parser("rescore", help="metrics of finished runs against an annotation set, from their stored maps")
    dataset_args(q, False)
    q.add_argument("--set", required=True, help="set name, id or ground-truth version")
    q.add_argument("--job", type=int, nargs="+", action="extend", help="only these jobs (default: all on the dataset)")
    q.add_argument("--inline", action="store_true", help="run here instead of on a worker")
    q.add_argument("--dry-run", action="store_true", help="only list what would be re-scored")
    q.set_defaults(func=cmd_rescore)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


__all__ = ["add_annotation_commands"]
