//! Shared sessions for horizontally scaled services: a tower layer over Redis Cluster with signed cookies and no lost updates.
