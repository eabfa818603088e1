"""
The master's web side: the dashboard page, its JSON API and live events,
and C{/metrics} for Prometheus, served by twisted.web in the master's own
reactor (L{picluster.web.site}).
"""
