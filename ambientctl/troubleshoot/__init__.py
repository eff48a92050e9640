"""Node-level troubleshooting on the local cluster: reaching the components' endpoints from the host
(``reach``), health checks (``checks``), proxy sync status (``syncstatus``) and "why is this allowed or
denied" (``explain``). The decisions are pure functions over facts gathered through ``reach``; the
commands live in ``ambientctl.commands.troubleshoot``.
"""
