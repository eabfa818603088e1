"""
The system tier: what only real processes and real programs can show.

twistd plugins started for real, SIGKILL and restart, a real Chromium on the
dashboard, a real Prometheus and InfluxDB, systemd's own checks, an editable
install, the docs build and the linter, every benchmark at its quick size.
The unit tier (the rest of C{tests/}) runs alone in well under a minute.
"""
