"""The project's command line: run, sweep, report, leaderboard, train, bench (see harness/cli.py)."""
