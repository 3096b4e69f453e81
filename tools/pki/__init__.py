"""A fleet's identities: its CA, the certificates of devices and services, and the broker ACL
made from them (``edgeloop pki``, ``edgeloop regional acl``)."""
