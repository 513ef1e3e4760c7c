"""Backup and restore (kvstore snapshot save|restore): docs in README, "Backup and restore"."""
