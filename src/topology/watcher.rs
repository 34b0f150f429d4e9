//! The hotplug watcher: uevents for cpu, memory and node changes, a periodic re-scan as a
//! fallback, and a new topology generation published only when something changed.
