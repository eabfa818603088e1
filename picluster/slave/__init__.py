"""
The slave: its session with the master (L{session}: hello, facts, vitals,
keepalives, rejoining through a L{ReconnectingClientFactory}) and the runner
of the tasks the master hands it (L{runner}).
"""
