"""The built-in worker: a supervisor process that claims runs and hands them to executor
processes (``pool``), wakes on PostgreSQL NOTIFY (``wakeup``), heartbeats, recovers runs of
lost workers, ticks cron schedules and drains on SIGTERM (``supervisor``).
"""
