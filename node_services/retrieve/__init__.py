"""Pulling studies from a PACS into the node: ``pacs-ai run --from``, ``pacs-ai backfill``
and runs started on the dashboard.

* :mod:`~node_services.retrieve.base`: queries, matches, the source protocol, series
  filters;
* :mod:`~node_services.retrieve.dimse`: C-FIND, C-GET, C-MOVE (pynetdicom);
* :mod:`~node_services.retrieve.dicomweb`: QIDO-RS, WADO-RS;
* :mod:`~node_services.retrieve.sources`: the source a destination's ``query_retrieve``
  role names;
* :mod:`~node_services.retrieve.pacing`: a backfill's rate and time window;
* :mod:`~node_services.retrieve.retriever`: a retrieval, study by study, into the spool
  and the ledger, where the node's completion watcher takes the studies on;
* :mod:`~node_services.retrieve.service`: the node's runner of dashboard retrievals.
"""
