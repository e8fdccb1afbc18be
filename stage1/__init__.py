"""The node side: wire protocol, stage-one client, provisiond and the simulated node."""
