"""Node-side services: what ``pacs-ai serve`` runs around the DICOM node.

* :mod:`node_services.delivery`: the outbox's delivery to destinations (C-STORE or
  STOW-RS), retry schedule, dead letters, misconfigured destinations;
* :mod:`node_services.stow`: the STOW-RS client used by delivery;
* :mod:`node_services.reconciler`: makes the broker agree with the ledger;
* :mod:`node_services.retention`: removes spool, result and quarantine files past
  their retention.

Like :mod:`dicom_node`, none of them imports a machine-learning framework; what runs in
``pacs-ai worker`` lives in :mod:`workers`.
"""
