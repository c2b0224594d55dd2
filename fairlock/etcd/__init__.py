"""The distributed fair lock on etcd (same grant rule as the local lock, decided from etcd state)."""
