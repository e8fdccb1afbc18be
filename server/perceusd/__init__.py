"""perceusd's parts, one job each; :mod:`perceus.server.daemon` runs them.

* ``session``: one node's session, the asyncio driver of the protocol's ``MasterConnection``;
* ``progress``: what the control socket shows of a session;
* ``streamer``: the thread that sends image and kernel bytes with sendfile(2);
* ``decision``: WAIT, ASSIGN or REFUSE for a node checking in;
* ``secretfilter``: the secret module parts withheld from a node that did not prove the site key;
* ``offer``: the VNFS files a session offers, opened and checked against the manifest;
* ``memo``: sha256s and directory sets computed once, in a thread, however many sessions ask;
* ``checkins``: the database thread that finds, adds and records checking-in nodes.
"""
