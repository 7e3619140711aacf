//! The EduMind operator: reconciles `School` resources into per-school PostgreSQL
//! databases, and the command-line tools that run next to it.

pub mod backup;
