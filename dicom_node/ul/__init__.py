"""Our own lean DICOM Upper Layer data path (PS3.8) for the node's hot loop.

pynetdicom decodes every PDU in Python from 4096-byte reads, dispatches each message
through events and passes it between threads with 1 ms polling sleeps; at 500 images/s
that is most of the time a C-STORE takes. This package reads PDUs with large
``recv_into`` calls into one reusable buffer, hands P-DATA-TF fragments to the caller as
memory views (so that data sets stream straight into the spool), and writes the DIMSE
command sets itself. Association negotiation, which happens once per association and has
many rarely used sub-items, reuses pynetdicom's PDU encoders and decoders.

* :mod:`.pdu` -- reading PDUs from a socket, the fixed-size PDUs, P-DATA-TF framing;
* :mod:`.dimse` -- DIMSE command sets (PS3.7 9, E): C-STORE and C-ECHO;
* :mod:`.negotiation` -- A-ASSOCIATE-RQ/AC/RJ for both roles (PS3.8 9.3.2-9.3.4).
"""
