//! Example workloads.

mod llm;
pub mod order;
pub mod podcast;
pub mod transcripts;
