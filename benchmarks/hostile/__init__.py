"""The hostile-input campaign: traffic an attacker or a crowd would send, against the real server process.

    python -m benchmarks.hostile [--part stdio|http|upstream] [--seed 1] [--scale 1.0] [--json FILE]

Each part is a sibling module exposing `PART = Part(name, run)`, where `run(plan, root)` drives the
real `model-gateway serve` process and returns one `Result` (see `record`): tries, crashes,
hangs (a ping unanswered for longer than `HANG_S`), non-JSON stdout bytes, the longest
event-loop block the server measured itself, peak vs idle RSS and cross-principal accesses.
The parts are `stdio`, `http` and `upstream` (upstream faults behind a stdio server), listed in
`__main__.PARTS`; a new part is a new module listed there. The goals and the table are shared.

The server measures its own event loop when MODEL_GATEWAY_LOOP_WATCH=1 (see
`server.loopwatch`); a server without that watchdog reports no figure, and the campaign
then shows only the longest ping round trip it saw from outside.
"""
