"""
Who may join a cluster, and how each side knows the other.

A cluster's master holds a private CA that signs its own certificate, and a
secret per credential (slave, client, read-only).  A join token
(L{picluster.trust.token}) carries the CA's fingerprint and one secret: a
node pins the master from the token alone, and proves it holds the secret
by a proof bound to its TLS channel (L{picluster.trust.channel}), so the
secret never crosses the wire and a replayed or relayed proof fails.

Shared by master, slave and client, like the wire; it imports no role.
"""
