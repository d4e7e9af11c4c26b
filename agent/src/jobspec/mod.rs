//! Job files: HCL shaped like Nomad's jobspec (or the same document as JSON),
//! parsed and validated into a [`model::Job`], with every error located.

pub mod model;

pub use model::*;
