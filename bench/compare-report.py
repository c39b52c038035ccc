"""The report of bench/compare.sh: medians per cell, ratios, markdown, CSV, SVG.

    compare-report.py RAW.tsv META.tsv OUT.md OUT.csv OUT.svg

RAW has one line per cell and round, as compare.sh writes it:
round, path, server, req/s, p50, p99 (wrk's units), requests, server CPU
ticks, backend CPU ticks, origin fetches, origin connections accepted,
non-2xx responses, socket errors, and the server's user CPU ticks (not in
runs before the bytes relay was added); in the order the cells ran.
Prints the markdown table to stdout too. Standard library only: the chart
is SVG written by hand.
"""

import csv
import statistics
import sys
from html import escape

# Each row of the table: what a cell (sidecache's, but for the floor) is
# compared against, and the goal of issue 11 for the req/s ratio (None: no
# goal, reported only). The CPU goal applies to memory hits: at most 0.9x
# nginx's CPU per request. The floor is examples/relay_floor.rs: bytes
# copied between connections, no HTTP; what no proxy here can beat.
ROWS = [
    # (label, measured cell, reference cell, reference label, goal, cpu goal)
    ("pass-through, 1 KiB", ("pass", "sidecache"), ("pass", "nginx"), "nginx proxy_pass", 1.1, None),
    ("floor: bytes relayed, no HTTP, 1 KiB", ("pass", "relay"), ("pass", "nginx"), "nginx proxy_pass", None, None),
    ("memory hit, 1 KiB", ("hit1k", "sidecache"), ("hit1k", "nginx"), "nginx proxy_cache", 1.1, 0.9),
    ("memory hit, 16 KiB", ("hit16k", "sidecache"), ("hit16k", "nginx"), "nginx proxy_cache", 1.1, 0.9),
    ("memory hit, 256 KiB", ("hit256k", "sidecache"), ("hit256k", "nginx"), "nginx proxy_cache", None, None),
    ("cacheable miss (fill), 1 KiB", ("fill", "sidecache"), ("fill", "nginx"), "nginx proxy_cache", None, None),
    ("Redis hit, 1 KiB, L1 off", ("redis", "sidecache"), ("redis", "redis-benchmark"),
     "redis-benchmark GET (ceiling)", 0.5, None),
    ("Redis hit, 1 KiB, L1 off", ("redis", "sidecache"), ("hit1k", "sidecache"),
     "sidecache memory hit, 1 KiB", 0.75, None),
    ("cacheable miss (fill), 1 KiB", ("fill", "sidecache"), ("pass", "sidecache"),
     "sidecache pass-through, 1 KiB", 1.0, None),
    ("pass-through, 1 KiB", ("pass", "sidecache"), ("pass", "relay"),
     "the floor (bytes relayed, no HTTP)", None, None),
]
# Rows whose reference runs other software than a proxy: a CPU ratio there
# compares unlike work, so the table leaves it out.
NO_CPU_RATIO = {"redis-benchmark GET (ceiling)"}
# What each cell's origin fetches per request should be: 0 for hits, 1 for
# pass-through and fill; far from it, the cell measured another path.
EXPECTED_FETCHES = {"pass": 1, "hit1k": 0, "hit16k": 0, "hit256k": 0, "redis": 0, "fill": 1}
UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def latency_ms(text):
    """wrk's "510.00us" / "2.31ms" / "1.02s" in milliseconds."""
    for unit in ("us", "ms", "s", "m"):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * UNITS_MS[unit]
    raise ValueError(f"unknown latency unit: {text!r}")


def read_cells(raw_path, clk_tck):
    """{(path, server): [one dict per round]}"""
    cells = {}
    with open(raw_path) as raw:
        for order, line in enumerate(raw):
            f = line.rstrip("\n").split("\t")
            requests = int(f[6])
            cell = {
                "round": int(f[0]),
                "rps": float(f[3]),
                "p50": latency_ms(f[4]),
                "p99": latency_ms(f[5]),
                "requests": requests,
                # ticks -> µs, per completed request
                "cpu": int(f[7]) * 1e6 / clk_tck / requests,
                "user_cpu": int(f[13]) * 1e6 / clk_tck / requests if len(f) > 13 else None,
                "backend_cpu": int(f[8]) * 1e6 / clk_tck / requests,
                "fetches": int(f[9]) / requests,
                "origin_conns": int(f[10]),
                "non2xx": int(f[11]),
                "errors": f[12],
                "order": order,
            }
            cells.setdefault((f[1], f[2]), []).append(cell)
    return cells


def median(cells, key):
    values = [c[key] for c in cells if c[key] is not None]
    return statistics.median(values) if values else None


def paired_ratios(a, b, key):
    """Per-round ratios a/b: two cells of a round ran back to back."""
    by_round = {c["round"]: c[key] for c in b}
    return [c[key] / by_round[c["round"]] for c in a if by_round.get(c["round"])]


def summarize(cells):
    rows = []
    for label, a_key, b_key, against, goal, cpu_goal in ROWS:
        if a_key not in cells or b_key not in cells:
            continue  # a run from before that cell was measured
        a, b = cells[a_key], cells[b_key]
        ratios = paired_ratios(a, b, "rps")
        cpu_ratios = [] if against in NO_CPU_RATIO else paired_ratios(a, b, "cpu")
        ratio = statistics.median(ratios)
        cpu_ratio = statistics.median(cpu_ratios) if cpu_ratios else None
        met = None
        if goal is not None:
            met = ratio >= goal and (cpu_goal is None or (cpu_ratio is not None and cpu_ratio <= cpu_goal))
        rows.append({
            "path": label, "against": against,
            "a_rps": median(a, "rps"), "b_rps": median(b, "rps"),
            "ratio": ratio, "ratio_min": min(ratios), "ratio_max": max(ratios),
            "a_p50": median(a, "p50"), "a_p99": median(a, "p99"),
            "b_p50": median(b, "p50"), "b_p99": median(b, "p99"),
            "a_cpu": median(a, "cpu"), "b_cpu": median(b, "cpu"),
            "a_user": median(a, "user_cpu"), "b_user": median(b, "user_cpu"),
            "cpu_ratio": cpu_ratio, "goal": goal, "cpu_goal": cpu_goal, "met": met,
            "floor": "relay" in (a_key[1], b_key[1]),
        })
    return rows


def rate(x):
    return f"{x / 1000:.1f}k"


def goal_text(row):
    if row["goal"] is None:
        return "—"
    text = f"≥ {row['goal']:g}"
    if row["cpu_goal"] is not None:
        text += f", CPU ≤ {row['cpu_goal']:g}"
    return f"{text}: {'met' if row['met'] else 'not met'}"


def cpu_text(cpu, user):
    """CPU µs/req, with its user-space part when the run recorded it."""
    return f"{cpu:.1f}" if user is None else f"{cpu:.1f} ({user:.1f})"


def markdown_table(rows, rounds):
    spread = " (min–max)" if rounds > 1 else ""
    lines = [
        f"| path | against | req/s | their req/s | ratio{spread} | p50 / p99 ms"
        " | their p50 / p99 ms | CPU µs/req (user) | their CPU µs/req (user) | CPU ratio | goal |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for r in rows:
        # Two decimals, or three where two would round a miss up to its goal.
        digits = 3 if r["met"] is False and round(r["ratio"], 2) >= r["goal"] else 2
        ratio = f"**{r['ratio']:.{digits}f}**"
        if rounds > 1:
            ratio += f" ({r['ratio_min']:.2f}–{r['ratio_max']:.2f})"
        cpu_ratio = "—" if r["cpu_ratio"] is None else f"{r['cpu_ratio']:.2f}"
        lines.append(
            f"| {r['path']} | {r['against']} | {rate(r['a_rps'])} | {rate(r['b_rps'])} | {ratio}"
            f" | {r['a_p50']:.2f} / {r['a_p99']:.2f} | {r['b_p50']:.2f} / {r['b_p99']:.2f}"
            f" | {cpu_text(r['a_cpu'], r['a_user'])} | {cpu_text(r['b_cpu'], r['b_user'])} | {cpu_ratio}"
            f" | {goal_text(r)} |"
        )
    return "\n".join(lines)


def rounds_table(cells):
    lines = [
        "| round | path | server | req/s | p50 / p99 ms | CPU µs/req (user) | backend CPU µs/req"
        " | origin fetches/req | new origin conns | non-2xx | socket errors |",
        "|--:|---|---|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    ran = sorted(((c["order"], path, server, c) for (path, server), cs in cells.items() for c in cs))
    for _, path, server, c in ran:
        lines.append(
            f"| {c['round']} | {path} | {server} | {c['rps']:.0f} | {c['p50']:.2f} / {c['p99']:.2f}"
            f" | {cpu_text(c['cpu'], c['user_cpu'])}"
            f" | {c['backend_cpu']:.1f} | {c['fetches']:.3f} | {c['origin_conns']} | {c['non2xx']} | {c['errors']} |"
        )
    return "\n".join(lines)


def warnings(cells):
    """Cells that did not measure the path they name."""
    out = []
    for (path, server), cs in sorted(cells.items()):
        if server == "redis-benchmark":
            continue
        for c in cs:
            if abs(c["fetches"] - EXPECTED_FETCHES[path]) > 0.02:
                out.append(f"round {c['round']} {path}/{server}: {c['fetches']:.3f} origin fetches per request"
                           f" (expected {EXPECTED_FETCHES[path]})")
            if c["non2xx"] or c["errors"] != "-":
                out.append(f"round {c['round']} {path}/{server}: {c['non2xx']} non-2xx, socket errors {c['errors']}")
    return out


def write_csv(rows, path):
    fields = ["path", "against", "a_rps", "b_rps", "ratio", "ratio_min", "ratio_max", "a_p50", "a_p99",
              "b_p50", "b_p99", "a_cpu", "b_cpu", "cpu_ratio", "goal", "cpu_goal", "met", "a_user", "b_user"]
    names = ["path", "against", "sidecache_rps", "their_rps", "ratio", "ratio_min", "ratio_max",
             "sidecache_p50_ms", "sidecache_p99_ms", "their_p50_ms", "their_p99_ms",
             "sidecache_cpu_us_per_req", "their_cpu_us_per_req", "cpu_ratio", "goal", "cpu_goal", "goal_met",
             "sidecache_user_cpu_us_per_req", "their_user_cpu_us_per_req"]
    with open(path, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(names)
        for r in rows:
            writer.writerow(["" if r[f] is None else (f"{r[f]:.4g}" if isinstance(r[f], float) else r[f])
                             for f in fields])


def svg_chart(rows, meta):
    """Horizontal bars of the req/s ratio per row, in two groups: against
    nginx (a dashed line at the 1.1 goal) and against a ceiling or sidecache
    itself (a tick at each row's own goal). Whiskers span the rounds; the
    solid line at 1.0 is parity."""
    width, left, right, bar_h, gap, head_h = 860, 330, 80, 22, 12, 30
    groups = [
        ("against nginx, same run", [r for r in rows if r["against"].startswith("nginx")]),
        ("against a ceiling, or sidecache's own path", [r for r in rows if not r["against"].startswith("nginx")]),
    ]
    top = 62
    height = top + sum(head_h + len(g) * (bar_h + gap) for _, g in groups) + 73
    top_ratio = max(1.5, max(r["ratio_max"] for r in rows) * 1.12)
    scale = (width - left - right) / top_ratio

    def x(v):
        return left + v * scale

    def label(px, py, text, anchor="start", extra=""):
        # A white halo keeps a label readable where it crosses a line.
        return (f'<text x="{px:.1f}" y="{py:.1f}" text-anchor="{anchor}" stroke="white" stroke-width="3" '
                f'paint-order="stroke" {extra}>{escape(text)}</text>')

    rounds = int(meta["rounds"])
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="13">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="20" y="24" font-size="15" font-weight="bold">sidecache req/s ÷ reference req/s, '
        f'median of {rounds} round{"s" if rounds != 1 else ""} (higher is better)</text>',
        f'<text x="20" y="44" fill="#555">{escape(meta["load"])}, {meta["seconds"]} s per cell, loopback, '
        f'{meta["cpus"]} cores; nginx {escape(meta["nginx"])}, Redis {escape(meta["redis"])}, '
        f'sidecache {escape(meta["sidecache"])}</text>',
    ]
    labels = []  # drawn last, over the bars and lines
    y = top
    for g, (heading, members) in enumerate(groups):
        parts.append(f'<text x="20" y="{y + 20}" font-weight="bold" fill="#333">{escape(heading)}</text>')
        y += head_h
        first = y
        for r in members:
            met = r["met"] if r["met"] is not None else r["ratio"] >= 1.0
            colour = "#8a8a8a" if r["floor"] else "#3a8f4b" if met else "#d9822b"
            parts.append(f'<text x="{left - 8}" y="{y + 10}" text-anchor="end">{escape(r["path"])}</text>')
            parts.append(f'<text x="{left - 8}" y="{y + 23}" text-anchor="end" fill="#666" font-size="11">'
                         f'vs {escape(r["against"])}</text>')
            parts.append(f'<rect x="{left}" y="{y}" width="{r["ratio"] * scale:.1f}" height="{bar_h}" '
                         f'fill="{colour}"/>')
            mid = y + bar_h / 2
            if r["ratio_max"] > r["ratio_min"]:
                parts.append(f'<line x1="{x(r["ratio_min"]):.1f}" x2="{x(r["ratio_max"]):.1f}" y1="{mid}" '
                             f'y2="{mid}" stroke="#222" stroke-width="1.2"/>')
                for v in (r["ratio_min"], r["ratio_max"]):
                    parts.append(f'<line x1="{x(v):.1f}" x2="{x(v):.1f}" y1="{mid - 5}" y2="{mid + 5}" '
                                 'stroke="#222"/>')
            if g == 1 and r["goal"] is not None:
                parts.append(f'<line x1="{x(r["goal"]):.1f}" x2="{x(r["goal"]):.1f}" y1="{y - 4}" '
                             f'y2="{y + bar_h + 4}" stroke="#1f5fa8" stroke-width="2.5"/>')
            # Inside the bar's start, clear of the whiskers, lines and
            # ticks; outside only when the bar is too short to hold it.
            if r["ratio"] * scale > 56:
                labels.append(f'<text x="{left + 6}" y="{y + 16}" fill="white" font-weight="bold">'
                              f'{r["ratio"]:.2f}×</text>')
            else:
                labels.append(label(x(max(r["ratio"], r["ratio_max"])) + 6, y + 16, f'{r["ratio"]:.2f}×'))
            y += bar_h + gap
        if g == 0:
            parts.append(f'<line x1="{x(1.1):.1f}" x2="{x(1.1):.1f}" y1="{first - 6}" y2="{y - gap + 6}" '
                         'stroke="#1f5fa8" stroke-width="1.5" stroke-dasharray="5 4"/>')
            labels.append(label(x(1.1) + 4, first - 8, "1.1 goal", extra='fill="#1f5fa8" font-size="11"'))
    parts.append(f'<line x1="{x(1.0):.1f}" x2="{x(1.0):.1f}" y1="{top + head_h - 6}" y2="{y - gap + 6}" '
                    'stroke="#222" stroke-width="1.5"/>')
    parts += labels
    parts.append(label(x(1.0), y + 8, "1.0 = as fast", anchor="middle"))
    parts.append(f'<text x="20" y="{y + 32}" fill="#666" font-size="11">Blue: the goal of issue 11 (dashed for '
                 'the nginx rows, a tick for the others). Whiskers: the lowest and highest round.</text>')
    parts.append(f'<text x="20" y="{y + 47}" fill="#666" font-size="11">Green: goal met, or at least as fast '
                 'where the row has no goal; orange: not.</text>')
    parts.append(f'<text x="20" y="{y + 62}" fill="#666" font-size="11">Grey: a row with the floor (bytes '
                 'relayed, no HTTP; examples/relay_floor.rs), a bound rather than a result.</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def main():
    raw_path, meta_path, md_path, csv_path, svg_path = sys.argv[1:6]
    with open(meta_path) as f:
        meta = dict(line.rstrip("\n").split("\t", 1) for line in f)
    cells = read_cells(raw_path, int(meta["clk_tck"]))
    rows = summarize(cells)
    rounds = int(meta["rounds"])
    table = markdown_table(rows, rounds)
    problems = warnings(cells)

    md = [
        f"# sidecache beside nginx, {meta['date']}",
        "",
        f"`{meta['command']}`: {meta['load']}, {meta['seconds']} s per cell after a {meta['warmup']} s warm-up, "
        f"{rounds} round{'s' if rounds != 1 else ''}, order rotated per round, medians shown.",
        f"Machine: {meta['cpus']} cores ({meta['cpu_model'] or 'unknown CPU'}), Linux {meta['kernel']}, loopback; "
        f"nginx {meta['nginx']}, wrk {meta['wrk']}, Redis {meta['redis']}; sidecache {meta['sidecache']}.",
        "",
        table,
        "",
        "req/s, latency and CPU: sidecache's, except in the floor row (examples/relay_floor.rs: bytes copied "
        "between each client connection and an origin connection of its own, no HTTP parsed or written; the "
        "least any proxy costs on this machine, kernel and runtime). "
        "CPU µs/req: user + system time of the server's processes (sidecache; nginx's master and workers; "
        "redis-server for redis-benchmark) over the measured run, divided by the requests completed; in "
        "brackets its user-space part (the rest is the kernel's: sockets, loopback, wake-ups). "
        "The Redis hit's sidecache CPU leaves out Redis's own (in the per-round table as backend CPU).",
        "",
        "## Every cell",
        "",
        rounds_table(cells),
        "",
        "In the order they ran. Backend CPU: the origin's (or, for the Redis hit, redis-server's) per request. "
        "Origin fetches/req: 0 for a hit, 1 for pass-through and fill. New origin conns: connections the origin "
        "accepted during the cell (0 when the proxy reuses its pool).",
    ]
    if problems:
        md += ["", "## Warnings", ""] + [f"- {p}" for p in problems]
    with open(md_path, "w") as f:
        f.write("\n".join(md) + "\n")
    write_csv(rows, csv_path)
    with open(svg_path, "w") as f:
        f.write(svg_chart(rows, meta))

    print(table)
    for p in problems:
        print(f"warning: {p}")


if __name__ == "__main__":
    main()
