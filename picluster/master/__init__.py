"""
The master: it accepts slaves and clients, keeps the registry of slaves,
queues and hands out tasks, and shows the cluster.

L{picluster.master.service.MasterService} owns every part: the connections
(L{connection}), the registry of slaves (L{registry}), the task queue
(L{scheduler} over the SQLite L{store}), the views of the cluster
(L{views}) and what serves them (L{web}, L{metrics}, L{influx}).
"""
