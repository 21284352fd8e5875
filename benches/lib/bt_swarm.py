#!/usr/bin/python3
"""The BitTorrent side of benches/flashcrowd.sh, with Debian's
python3-libtorrent (run it with /usr/bin/python3, whose module that is).

    bt_swarm.py make FILE ANNOUNCE_URL OUT.torrent
        writes a v1 torrent of FILE (libtorrent's default piece size) and
        prints its info-hash (hex), for the tracker's whitelist.

    bt_swarm.py client --torrent T --save DIR --listen IP:PORT --status FILE
                       --stop FILE (--seed | --go FILE)
        one BitTorrent client: a libtorrent session with DHT, LSD, UPnP
        and NAT-PMP off and several connections per IP allowed, libtorrent's
        defaults otherwise. A downloader sets up its session, says it is
        waiting (status), waits for the --go file (which holds the common
        start, Unix seconds) and adds the torrent then: it downloads and
        keeps seeding. The seed (--seed; seed mode: the file is trusted, not
        re-hashed) starts at once. Until the --stop file exists it rewrites
        --status (JSON, atomically) every 0.2 s: waiting, ready (the tracker
        answered), finished_seconds (from the common start to the torrent
        being complete; null before), uploaded/downloaded payload bytes,
        peers, progress and the last error.
"""

import argparse
import json
import os
import sys
import time

import libtorrent as lt


def make(path, announce, out):
    """A v1 torrent of one file; returns its info-hash (hex)."""
    storage = lt.file_storage()
    lt.add_files(storage, path)
    torrent = lt.create_torrent(storage, 0, flags=lt.create_torrent.v1_only)
    torrent.add_tracker(announce)
    torrent.set_creator("canopy benches/flashcrowd.sh")
    lt.set_piece_hashes(torrent, os.path.dirname(os.path.abspath(path)))
    data = lt.bencode(torrent.generate())
    with open(out, "wb") as f:
        f.write(data)
    return str(lt.torrent_info(out).info_hashes().v1)


def write_status(path, status):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(status, f)
    os.replace(tmp, path)


def client(args):
    settings = {
        "listen_interfaces": args.listen,
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "allow_multiple_connections_per_ip": True,
        "alert_mask": lt.alert_category.error
        | lt.alert_category.status
        | lt.alert_category.tracker,
    }
    session = lt.session(settings)
    params = lt.add_torrent_params()
    params.ti = lt.torrent_info(args.torrent)
    params.save_path = args.save
    if args.seed:
        params.flags |= lt.torrent_flags.seed_mode
    status = {
        "waiting": not args.seed,
        "ready": False,
        "finished_seconds": None,
        "uploaded": 0,
        "downloaded": 0,
        "peers": 0,
        "error": None,
    }
    start_at = time.time()
    if not args.seed:
        # Everything is set up; the torrent is added at the common start.
        write_status(args.status, status)
        while not os.path.exists(args.go):
            time.sleep(0.005)
        start_at = float(open(args.go).read())
        status["waiting"] = False
    handle = session.add_torrent(params)
    while not os.path.exists(args.stop):
        for alert in session.pop_alerts():
            if isinstance(alert, lt.tracker_reply_alert):
                status["ready"] = True
            elif isinstance(alert, (lt.tracker_error_alert, lt.torrent_error_alert)):
                status["error"] = alert.message()
            elif isinstance(alert, lt.torrent_finished_alert) and not args.seed:
                if status["finished_seconds"] is None:
                    status["finished_seconds"] = time.time() - start_at
        state = handle.status()
        if (
            not args.seed
            and status["finished_seconds"] is None
            and state.is_seeding
        ):
            status["finished_seconds"] = time.time() - start_at
        status["uploaded"] = state.total_payload_upload
        status["downloaded"] = state.total_payload_download
        status["peers"] = state.num_peers
        status["progress"] = state.progress
        write_status(args.status, status)
        session.wait_for_alert(200)
    state = handle.status()
    status["uploaded"] = state.total_payload_upload
    status["downloaded"] = state.total_payload_download
    write_status(args.status, status)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    make_args = commands.add_parser("make")
    make_args.add_argument("file")
    make_args.add_argument("announce")
    make_args.add_argument("out")
    client_args = commands.add_parser("client")
    client_args.add_argument("--torrent", required=True)
    client_args.add_argument("--save", required=True)
    client_args.add_argument("--listen", required=True)
    client_args.add_argument("--status", required=True)
    client_args.add_argument("--stop", required=True)
    role = client_args.add_mutually_exclusive_group(required=True)
    role.add_argument("--seed", action="store_true")
    role.add_argument("--go")
    args = parser.parse_args()
    if args.command == "make":
        print(make(args.file, args.announce, args.out))
    else:
        client(args)


if __name__ == "__main__":
    sys.exit(main())
