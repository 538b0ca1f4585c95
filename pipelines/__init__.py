"""Pipeline files (TOML -> typed config -> ordered steps), the local and Ray Data
executors, and the zfoundry CLI.
"""
