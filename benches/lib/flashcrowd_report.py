#!/usr/bin/python3
"""The report of benches/flashcrowd.sh: reads what the run left in its work
folder (bt/: each libtorrent client's status JSON and the b3sum checks;
canopy/: the common start, each `canopy get`'s exit status and time, each
leaf's `canopy status --json` and the checks), prints a table, writes the
JSON document and appends a dated section to benches/RESULTS.md.

Per side: finish times (seconds from the common start) of the downloaders
that finished with a good file; failed = not finished before the timeout,
or a file that is missing or differs from the original; the last and mean
finish over the good ones (with failures the last is a lower bound); the
seed's uploaded payload bytes and their share of N x size; the bytes the
downloaders uploaded; and the no-sharing bound N x size / seed uplink.
"""

import argparse
import datetime
import json
import os
import statistics


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def read_checks(path):
    checks = {}
    try:
        with open(path) as f:
            for line in f:
                home, result = line.split()
                checks[int(home)] = result
    except OSError:
        pass
    return checks


def summarize(finishes, failures, seed_uploaded, downloaders_uploaded, received, n, size):
    good = [t for t in finishes.values() if t is not None]
    return {
        "finish_seconds": {str(k): v for k, v in sorted(finishes.items())},
        "failures": failures,
        "failed": len(failures),
        "last_finish_seconds": max(good) if good else None,
        "mean_finish_seconds": statistics.mean(good) if good else None,
        "seed_uploaded_bytes": seed_uploaded,
        "seed_share": seed_uploaded / (n * size) if seed_uploaded is not None else None,
        "seed_copies": seed_uploaded / size if seed_uploaded is not None else None,
        "downloaders_uploaded_bytes": downloaders_uploaded,
        # Everything sent over what the downloaders needed: above 1.0,
        # bytes sent twice or cut off before use.
        "sent_over_needed": (
            ((seed_uploaded or 0) + downloaders_uploaded) / (n * size)
        ),
        # What the downloaders took in (libtorrent: payload downloaded;
        # Canopy: verified bytes) over what they needed.
        "received_over_needed": received / (n * size),
    }


def bittorrent(work, n, size):
    d = os.path.join(work, "bt")
    if not os.path.exists(os.path.join(d, "go")):
        return None
    checks = read_checks(os.path.join(d, "checks.txt"))
    finishes, failures, uploaded, received = {}, {}, 0, 0
    for i in range(1, n + 1):
        status = read_json(os.path.join(d, f"d{i}.json")) or {}
        finished = status.get("finished_seconds")
        check = checks.get(i, "not checked")
        uploaded += status.get("uploaded") or 0
        received += status.get("downloaded") or 0
        if finished is None:
            failures[str(i)] = "not finished within the timeout" + (f": {status['error']}" if status.get("error") else "")
        elif check != "ok":
            failures[str(i)] = f"file {check}"
        finishes[i] = finished if str(i) not in failures else None
    seed = read_json(os.path.join(d, "seed.json")) or {}
    return summarize(finishes, failures, seed.get("uploaded"), uploaded, received, n, size)


def canopy(work, n, size):
    d = os.path.join(work, "canopy")
    try:
        with open(os.path.join(d, "go")) as f:
            t0 = float(f.read())
    except OSError:
        return None
    try:
        with open(os.path.join(d, "timed_out")) as f:
            timed_out = float(f.read())
    except OSError:
        timed_out = None
    checks = read_checks(os.path.join(d, "checks.txt"))
    finishes, failures, uploaded, received = {}, {}, 0, 0
    for i in range(1, n + 1):
        finished, why = None, None
        try:
            with open(os.path.join(d, f"done{i}")) as f:
                code, at = f.read().split()
            if timed_out is not None and float(at) >= timed_out:
                why = "not finished within the timeout"
            elif code == "0":
                finished = float(at) - t0
            else:
                err = ""
                try:
                    with open(os.path.join(d, f"get{i}.err")) as f:
                        err = f.read().strip().splitlines()[-1]
                except (OSError, IndexError):
                    pass
                why = f"canopy get exited {code}" + (f": {err}" if err else "")
        except (OSError, ValueError):
            why = "not finished within the timeout"
        check = checks.get(i, "not checked")
        if why is None and check != "ok":
            why = f"file {check}"
        if why is not None:
            failures[str(i)] = why
            finished = None
        finishes[i] = finished
        status = read_json(os.path.join(d, f"status{i}.json")) or {}
        uploaded += (status.get("totals") or {}).get("uploaded_bytes") or 0
        received += (status.get("totals") or {}).get("downloaded_bytes") or 0
    seed = read_json(os.path.join(d, "status0.json")) or {}
    seed_uploaded = (seed.get("totals") or {}).get("uploaded_bytes")
    side = summarize(finishes, failures, seed_uploaded, uploaded, received, n, size)
    # The leaves' refusal counters: the seed's, and the downloaders' summed.
    side["seed_counters"] = read_counters(os.path.join(d, "metrics0.txt"))
    side["duplicates"] = duplicates(work, n, size)
    side["downloader_counters"] = {}
    for i in range(1, n + 1):
        for name, value in read_counters(os.path.join(d, f"metrics{i}.txt")).items():
            side["downloader_counters"][name] = side["downloader_counters"].get(name, 0) + value
    return side


def transfers(work, n):
    """Every upload the leaves logged: (server home, downloader IP, first
    byte, bytes sent), from their "upload started" (range) and "upload
    ended" (bytes) lines, paired in order per connection."""
    found = []
    for server in range(0, n + 1):
        started = {}
        try:
            with open(os.path.join(work, "canopy", f"l{server}.log")) as f:
                lines = f.readlines()
        except OSError:
            continue
        for line in lines:
            if "upload started" not in line and "upload ended" not in line:
                continue
            fields = dict(
                part.split("=", 1) for part in line.split() if "=" in part and not part.startswith("file=")
            )
            peer = fields.get("peer")
            if peer is None:
                continue
            if "upload started" in line and "range" in fields:
                first = int(fields["range"].split("-", 1)[0])
                started.setdefault(peer, []).append(first)
            elif "upload ended" in line and started.get(peer):
                first = started[peer].pop(0)
                found.append((server, peer.rsplit(":", 1)[0], first, int(fields.get("bytes", "0"))))
    return found


def duplicates(work, n, size, group=1 << 20):
    """Whole 1 MiB groups each downloader was sent more than once, and by
    whom (the seed in a copy or not), and the bytes of groups cut short."""
    groups = (size + group - 1) // group
    copies = {}  # (downloader ip, group) -> [server homes]
    cut = 0
    for server, ip, first, sent in transfers(work, n):
        end = first + sent
        g = first // group
        while g < groups:
            lo, hi = g * group, min((g + 1) * group, size)
            if hi <= end and lo >= first:
                copies.setdefault((ip, g), []).append(server)
            elif lo < end:
                cut += min(hi, end) - max(lo, first)
            if hi >= end:
                break
            g += 1
    extra = [servers for servers in copies.values() if len(servers) > 1]
    return {
        "whole_groups_sent": sum(len(v) for v in copies.values()),
        "groups_needed": n * groups,
        "groups_sent_more_than_once": len(extra),
        "extra_copies": sum(len(v) - 1 for v in extra),
        "extra_copies_with_a_seed_copy": sum(len(v) - 1 for v in extra if 0 in v),
        "bytes_of_groups_cut_short": cut,
    }


# Counters of a leaf's /metrics worth seeing after a crowd.
COUNTERS = (
    "canopy_upload_refusals",
    "canopy_upload_offer_refusals",
    "canopy_upload_address_refusals",
    "canopy_http_connections_refused",
    "canopy_uploads_cut_stalled",
    "canopy_connect_backs_refused",
)


def read_counters(path):
    counters = {}
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                name = parts[0].removesuffix("_total") if parts else ""
                if len(parts) == 2 and name in COUNTERS:
                    counters[name] = int(float(parts[1]))
    except (OSError, ValueError):
        pass
    return counters


def fmt(value, digits=1, suffix=""):
    return "-" if value is None else f"{value:.{digits}f}{suffix}"


def ratio(a, b):
    return a / b if a is not None and b else None


def table(doc):
    n, bound = doc["n"], doc["bound_seconds"]
    rows = [
        "| side | last finish | mean finish | seed's share of bytes (copies) | downloaders uploaded | all sent / needed | received / needed | failed | no-sharing bound |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, key in (("BitTorrent (libtorrent + opentracker)", "bittorrent"), ("Canopy", "canopy")):
        side = doc.get(key)
        if side is None:
            continue
        last = fmt(side["last_finish_seconds"], 1, " s")
        if side["failed"]:
            last = f">= {last}" if side["last_finish_seconds"] is not None else "none finished"
        share = "-"
        if side["seed_share"] is not None:
            share = f"{side['seed_share'] * 100:.0f}% ({side['seed_copies']:.1f})"
        up = side["downloaders_uploaded_bytes"] / 2**20
        rows.append(
            f"| {name} | {last} | {fmt(side['mean_finish_seconds'], 1, ' s')} | {share} "
            f"| {up:.0f} MiB | {side['sent_over_needed']:.2f} | {side['received_over_needed']:.2f} | {side['failed']} of {n} | {bound:.0f} s |"
        )
    lines = ["\n".join(rows)]
    if doc.get("canopy_over_bittorrent_last") is not None:
        lines.append(
            f"Canopy / BitTorrent: last finish {doc['canopy_over_bittorrent_last']:.2f}x, "
            f"mean finish {fmt(doc.get('canopy_over_bittorrent_mean'), 2, 'x')} (goal <= 1.0x)."
        )
    if doc.get("goals_met") is not None:
        lines.append(
            "Issue 11's goals (both <= 1.0x, the seed's share <= BitTorrent's, no failure): "
            + ("met." if doc["goals_met"] else "NOT met.")
        )
    for name, key in (("BitTorrent", "bittorrent"), ("Canopy", "canopy")):
        side = doc.get(key)
        if side is None:
            continue
        times = " ".join(fmt(v, 1) for v in side["finish_seconds"].values())
        lines.append(f"{name} finishes (s, downloaders 1-{n}): {times}")
        for home, why in side["failures"].items():
            lines.append(f"{name} downloader {home} failed: {why}")
    side = doc.get("canopy")
    if side is not None:
        def counters(values):
            return ", ".join(f"{k.removeprefix('canopy_')} {v}" for k, v in values.items()) or "none read"
        dup = side["duplicates"]
        lines.append(
            f"Canopy, from the leaves' upload logs: {dup['whole_groups_sent']} whole 1 MiB groups sent "
            f"for {dup['groups_needed']} needed; {dup['groups_sent_more_than_once']} groups sent to the same "
            f"downloader more than once ({dup['extra_copies']} extra copies, {dup['extra_copies_with_a_seed_copy']} "
            f"of them of a group the seed also sent); {dup['bytes_of_groups_cut_short'] / 2**20:.1f} MiB in groups cut short."
        )
        lines.append(
            f"Canopy leaves' counters: seed: {counters(side['seed_counters'])}; "
            f"downloaders (sum): {counters(side['downloader_counters'])}"
        )
    return "\n\n".join(lines)


def main():
    p = argparse.ArgumentParser()
    for name in ("work", "uplink", "delay", "qdisc", "commit", "load", "json-out", "results"):
        p.add_argument("--" + name, default="")
    for name in ("n", "size", "uplink-bits", "timeout"):
        p.add_argument("--" + name, type=int, required=True)
    p.add_argument("--bound", type=float, required=True)
    a = p.parse_args()
    when = datetime.datetime.now(datetime.timezone.utc)
    doc = {
        "date": when.isoformat(timespec="seconds"),
        "commit": a.commit,
        "n": a.n,
        "size_bytes": a.size,
        "uplink": a.uplink,
        "uplink_bits_per_second": a.uplink_bits,
        "delay_one_way": a.delay,
        "uplink_qdisc": a.qdisc,
        "timeout_seconds": a.timeout,
        "load_average": a.load,
        "bound_seconds": a.bound,
        "bittorrent": bittorrent(a.work, a.n, a.size),
        "canopy": canopy(a.work, a.n, a.size),
    }
    bt, cn = doc["bittorrent"] or {}, doc["canopy"] or {}
    doc["canopy_over_bittorrent_last"] = ratio(cn.get("last_finish_seconds"), bt.get("last_finish_seconds"))
    doc["canopy_over_bittorrent_mean"] = ratio(cn.get("mean_finish_seconds"), bt.get("mean_finish_seconds"))
    doc["goals_met"] = None
    if bt and cn:
        doc["goals_met"] = bool(
            doc["canopy_over_bittorrent_last"] is not None
            and doc["canopy_over_bittorrent_last"] <= 1.0
            and doc["canopy_over_bittorrent_mean"] <= 1.0
            and cn["seed_share"] is not None
            and bt["seed_share"] is not None
            and cn["seed_share"] <= bt["seed_share"]
            and cn["failed"] == 0
            and bt["failed"] == 0
        )
    with open(a.json_out, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    settings = (
        f"{a.n} downloaders + 1 seed, {a.size / 2**20:.0f} MiB, every home's uplink {a.uplink} "
        f"({a.qdisc}), one-way delay into each home {a.delay}; commit {a.commit}; "
        f"load average at the end {a.load}"
    )
    text = table(doc)
    print(f"\nFlash crowd: {settings}\n\n{text}\n")
    if a.results:
        with open(a.results, "a") as f:
            f.write(
                f"\n## {when:%Y-%m-%d %H:%M} UTC, flash crowd (benches/flashcrowd.sh)\n\n"
                f"{settings}.\n\n{text}\n"
            )


if __name__ == "__main__":
    main()
