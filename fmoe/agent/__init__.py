"""The agent: task files, one assistant turn (turn.py), the loop with tools (loop.py), typed steps, transcripts, the
terminal UI, expect verdicts and remote models (remote.py). See docs/reference/agent.md."""
