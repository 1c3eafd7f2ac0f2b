"""``guardian prices``: GPU types, their CPU equivalents and premiums; ``prices refresh``.

The table reuses ``pricing.assess``, so the premium shown here is the one the audit uses.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any

import typer

from guardian.commands.common import ConfigOption, SetOption
from guardian.config import Config, load_config
from guardian.errors import GuardianError, ProviderError
from guardian.model import GpuInstance
from guardian.prices.assessment import PriceCatalog, assess, rule_of_thumb_reading
from guardian.prices.catalog import PROVIDERS, embedded_as_of, load_catalog, regions, source_date

if TYPE_CHECKING:
    from rich.table import Table

__all__ = ["register"]

STALE_AFTER_DAYS = 90


class ProviderName(StrEnum):
    AWS = "aws"
    GCP = "gcp"


class OutputFormat(StrEnum):
    TABLE = "table"
    JSON = "json"


RegionOption = Annotated[
    list[str] | None,
    typer.Option("--region", "-r", help="Region; repeat or comma-separate for several."),
]

prices_app = typer.Typer(
    help="GPU instance prices, their CPU equivalents and the premium against the 2–3× rule.",
    no_args_is_help=False,
)


def register(app: typer.Typer) -> None:
    app.add_typer(prices_app, name="prices")


def _split(values: list[str] | None) -> list[str]:
    return [part.strip() for value in values or [] for part in value.split(",") if part.strip()]


def _selected_regions(
    catalog: PriceCatalog, config: Config, provider: str | None, wanted: list[str]
) -> list[tuple[str, str]]:
    """(provider, region) pairs to show: as asked, else the configured scope."""
    providers = [provider] if provider else list(PROVIDERS)
    if wanted:
        chosen: list[tuple[str, str]] = []
        for region in wanted:
            owners = [p for p in providers if region in regions(catalog, p)]
            if not owners:
                known = "; ".join(f"{p}: {', '.join(regions(catalog, p))}" for p in providers)
                raise GuardianError(f"no prices for region {region!r}; known regions: {known}")
            chosen.extend((p, region) for p in owners)
        return chosen
    scope: list[tuple[str, str]] = []
    for name in providers:
        enabled = config.aws.enabled if name == "aws" else config.gcp.enabled
        if provider != name and not enabled:
            continue
        if name == "aws" and isinstance(config.aws.regions, list):
            scope.extend(("aws", region) for region in config.aws.regions)
        else:
            scope.extend((name, region) for region in regions(catalog, name))
    return scope or [(p, r) for p in providers for r in regions(catalog, p)]


def _rows(
    catalog: PriceCatalog, provider: str, region: str, config: Config
) -> list[dict[str, Any]]:
    low, high = config.cost.rule_of_thumb
    now = datetime.now(UTC)
    rows = []
    for entry in catalog.types.get(provider, {}).get(region, {}).values():
        if not entry.gpus:
            continue
        # The same assessment an audit makes of a running instance of this type.
        probe = GpuInstance(
            provider,
            "",
            region,
            "",
            entry.instance_type,
            entry.instance_type,
            now,
            entry.gpus,
            entry.gpu_model,
        )
        price = assess(catalog, probe)
        rows.append(
            {
                "instance_type": entry.instance_type,
                "gpu_count": entry.gpus,
                "gpu_model": entry.gpu_model,
                "gpu_memory_gib": entry.gpu_memory_gib,
                "vcpus": entry.vcpus,
                "memory_gib": entry.memory_gib,
                "hourly_price": price.hourly_price,
                "price_source": price.price_source,
                "cpu_equivalent": None
                if price.cpu_equivalent is None
                else {
                    "instance_type": price.cpu_equivalent.instance_type,
                    "hourly_price": price.cpu_equivalent.hourly_price,
                },
                "premium": price.premium,
                "rule_of_thumb": rule_of_thumb_reading(price.premium, low, high),
                "reason": price.reason,
            }
        )
    rows.sort(key=_row_order)
    return rows


def _row_order(row: dict[str, Any]) -> tuple[str, float, int, str]:
    """Family, then size: g5.xlarge … g5.48xlarge; g2-standard-4 … g2-standard-96."""
    name: str = row["instance_type"]
    family = name.split(".", 1)[0] if "." in name else name.rsplit("-", 1)[0]
    return (family, row["vcpus"], row["gpu_count"], name)


def _accelerators(catalog: PriceCatalog, provider: str, region: str) -> list[dict[str, Any]]:
    found = catalog.accelerators.get(provider, {}).get(region, {})
    return [
        {"accelerator_type": name, "hourly_price_per_gpu": usd}
        for name, usd in sorted(found.items(), key=lambda item: item[1])
    ]


def _sources(catalog: PriceCatalog, provider: str, region: str) -> list[str]:
    """Every source the region's prices come from (embedded catalog, refreshed cache)."""
    found = {
        catalog.source_of(provider, region, name)
        for name in catalog.types.get(provider, {}).get(region, {})
    }
    if catalog.accelerators.get(provider, {}).get(region):
        found.add(catalog.source.get(provider))
    return sorted(s for s in found if s)


def _age_note(source_labels: list[str], today: date, provider: str) -> str | None:
    dates = [d for d in (source_date(s) for s in source_labels) if d is not None]
    if not dates:
        return None
    age = (today - min(dates)).days
    if age <= STALE_AFTER_DAYS:
        return None
    return (
        f"the oldest of these prices is {age} days old; "
        f"`guardian prices refresh --provider {provider}` updates them"
    )


def _reading(value: str | None, low: float, high: float) -> str:
    return {
        "below": f"below {low:g}×",
        "within": f"within {low:g}–{high:g}×",
        "above": f"above {high:g}×",
    }.get(value or "", "—")


def _money(value: float | None) -> str:
    return "—" if value is None else f"${value:,.4f}"


def _print_tables(sections: list[dict[str, Any]], config: Config) -> None:
    from rich.table import Table

    from guardian.commands.common import data_console

    console = data_console()  # not a terminal: COLUMNS, else wide enough that nothing is cut
    low, high = config.cost.rule_of_thumb
    for section in sections:
        heading = f"{section['provider']} {section['region']} · " + " + ".join(
            section["price_sources"]
        )
        if section["note"]:
            heading += f" — {section['note']}"
        console.print(heading, style="bold", highlight=False)
        if section["gpu_types"]:
            table, hidden = _gpu_table(section["gpu_types"], low, high, console.width)
            console.print(table)
            if hidden:
                console.print(
                    f"Not shown at this width: {', '.join(hidden)} (--format json has them).",
                    highlight=False,
                )
        if section["accelerators"]:
            attached = Table(title="GPUs by the hour", title_justify="left")
            attached.add_column("Accelerator type")
            attached.add_column("$/GPU-h", justify="right")
            for item in section["accelerators"]:
                attached.add_row(item["accelerator_type"], _money(item["hourly_price_per_gpu"]))
            console.print(attached)
            console.print(
                "An N1 VM with attached GPUs costs its N1 machine type + count × the GPU's price; "
                "A2 and G2 machine types include their GPUs.",
                highlight=False,
            )
        if not section["gpu_types"] and not section["accelerators"]:
            console.print("no GPU prices in the catalog for this region", highlight=False)
        console.print()


# Never cut, at any width; the others join, in this order, as the width allows.
_PRICE_ESSENTIAL = ("GPU type", "$/h", "CPU equivalent", "CPU $/h", "Premium")
_PRICE_OPTIONAL = ("rule", "GPUs", "vCPU", "Memory GiB")
_PRICE_ORDER: tuple[str, ...] = ("GPU type", "GPUs", "vCPU", "Memory GiB", "$/h")
_PRICE_ORDER += ("CPU equivalent", "CPU $/h", "Premium", "rule")


def _gpu_row(row: dict[str, Any], low: float, high: float) -> dict[str, str]:
    gpus = f"{row['gpu_count']} × {row['gpu_model'] or 'GPU'}"
    if row["gpu_memory_gib"]:
        gpus += f" {row['gpu_memory_gib']:g} GiB"
    equivalent = row["cpu_equivalent"] or {}
    return {
        "GPU type": row["instance_type"],
        "GPUs": gpus,
        "vCPU": f"{row['vcpus']:g}",
        "Memory GiB": f"{row['memory_gib']:g}",
        "$/h": _money(row["hourly_price"]),
        "CPU equivalent": equivalent.get("instance_type", row["reason"] or "—"),
        "CPU $/h": _money(equivalent.get("hourly_price")),
        "Premium": "—" if row["premium"] is None else f"{row['premium']:.2f}×",
        "rule": _reading(row["rule_of_thumb"], low, high),
    }


def _gpu_table(
    rows: list[dict[str, Any]], low: float, high: float, width: int
) -> tuple[Table, list[str]]:
    """The GPU types of one region, fitted to ``width``: essential columns whole, the rest as
    they fit (``--format json`` has every value)."""
    from rich import box
    from rich.table import Table

    from guardian.report.table import fit_columns

    cells = [_gpu_row(row, low, high) for row in rows]
    headers = {c: c for c in _PRICE_ORDER} | {"rule": f"{low:g}–{high:g}× rule"}

    def widest(column: str) -> int:
        return max(len(text) for text in [headers[column], *(c[column] for c in cells)])

    def longest_word(column: str) -> int:
        texts = [headers[column], *(c[column] for c in cells)]
        return max(len(word) for text in texts for word in text.split())

    used = 2 + sum(widest(c) + 3 for c in _PRICE_ESSENTIAL)
    optional = [(c, widest(c), longest_word(c)) for c in _PRICE_OPTIONAL]
    extra, _ = fit_columns(width, used, optional)
    table = Table(box=box.SIMPLE_HEAD)
    columns = [c for c in _PRICE_ORDER if c in _PRICE_ESSENTIAL or c in extra]
    for column in columns:
        justify = "left" if column in ("GPU type", "GPUs", "CPU equivalent", "rule") else "right"
        wrap = {"no_wrap": True} if column in _PRICE_ESSENTIAL else {"overflow": "fold"}
        table.add_column(headers[column], justify=justify, **wrap)  # type: ignore[arg-type]
    for row in cells:
        table.add_row(*(row[c] for c in columns))
    return table, [headers[c] for c in _PRICE_OPTIONAL if c not in extra]


@prices_app.callback(invoke_without_command=True)
def prices(
    ctx: typer.Context,
    *,
    region: RegionOption = None,
    provider: Annotated[
        ProviderName | None, typer.Option("--provider", "-p", help="aws or gcp (default: both).")
    ] = None,
    output: Annotated[
        OutputFormat, typer.Option("--format", "-f", help="table or json.")
    ] = OutputFormat.TABLE,
    config_path: ConfigOption = None,
    overrides: SetOption = None,
) -> None:
    """Show GPU types with their CPU equivalent, premium and the 2–3× rule reading."""
    # `guardian prices -c FILE refresh` works as well as `guardian prices refresh -c FILE`.
    ctx.obj = {"config": config_path, "overrides": list(overrides or ())}
    if ctx.invoked_subcommand is not None:
        return
    config, _ = load_config(config_path, overrides or ())
    catalog = load_catalog(config.state_dir)
    today = datetime.now(UTC).date()
    chosen = _selected_regions(
        catalog, config, provider.value if provider else None, _split(region)
    )
    sections = []
    for name, region_name in chosen:
        labels = _sources(catalog, name, region_name)
        sections.append(
            {
                "provider": name,
                "region": region_name,
                "price_sources": labels,
                "note": _age_note(labels, today, name)
                if region_name in regions(catalog, name)
                else f"no prices for {region_name} in the catalog",
                "gpu_types": _rows(catalog, name, region_name, config),
                "accelerators": _accelerators(catalog, name, region_name),
            }
        )
    if output is OutputFormat.JSON:
        document = {
            "generated_at": datetime.now(UTC).isoformat(),
            "rule_of_thumb": list(config.cost.rule_of_thumb),
            "catalog_as_of": {p: d.isoformat() for p, d in embedded_as_of().items()},
            "regions": sections,
        }
        typer.echo(json.dumps(document, indent=2))
        return
    _print_tables(sections, config)


@prices_app.command("refresh")
def refresh_command(
    ctx: typer.Context,
    *,
    region: RegionOption = None,
    provider: Annotated[
        ProviderName, typer.Option("--provider", "-p", help="Price API to read.")
    ] = ProviderName.AWS,
    config_path: ConfigOption = None,
    overrides: SetOption = None,
) -> None:
    """Read current on-demand prices from the provider's price API into the state dir."""
    from guardian.prices.refresh import default_regions, refresh
    from guardian.prices.sources import source_for

    parent = ctx.obj if isinstance(ctx.obj, dict) else {}
    config, _ = load_config(
        config_path or parent.get("config"), [*parent.get("overrides", ()), *(overrides or ())]
    )
    wanted = _split(region) or default_regions(provider.value, config, config.state_dir)
    source = source_for(provider.value, config)
    report = refresh(source, wanted, config.state_dir, datetime.now(UTC))
    for outcome in report.outcomes:
        typer.echo(
            f"{report.provider} {outcome.region}: {outcome.types} types "
            f"({outcome.new} new, {outcome.changed} changed, {outcome.unchanged} unchanged)"
        )
    for failed_region, reason in report.failures.items():
        typer.echo(f"{report.provider} {failed_region}: not refreshed, old prices kept: {reason}")
    moves = report.biggest_moves()
    if moves:
        typer.echo("biggest moves:")
        for change in moves:
            typer.echo(
                f"  {change.region} {change.instance_type}: {_money(change.old_usd)} → "
                f"{_money(change.new_usd)} ({(change.relative or 0.0) * 100:+.1f}%)"
            )
    if report.moved_aside is not None:
        typer.echo(f"the unreadable old cache was kept as {report.moved_aside}")
    if report.outcomes:
        typer.echo(f"wrote {report.cache_path}")
    if report.failures:
        total = len(report.failures) + len(report.outcomes)
        raise ProviderError(
            f"prices refresh: {len(report.failures)} of {total} regions failed; "
            "their old prices are kept",
            provider=report.provider,
            operation="pricing:GetProducts",
        )
