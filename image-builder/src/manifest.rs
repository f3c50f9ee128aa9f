//! `manifest.json`: what `cocoon-image build` produced and what it measures to.
//!
//! This is the unsigned build record written next to the artifacts. Publishers turn the
//! `registers` and `image_hash` of each role into a signed `measurements::manifest` for release;
//! `cocoon-host launch` reads it to check the artifacts it boots and (under `--tee sim`) to know
//! the registers the simulated platform must report.
//!
//! The format is defined once, in `measurements::manifest_diff` (the manifest tools read the
//! same record); these are its names on the builder's side.

pub use measurements::manifest_diff::{
    BuildArtifact as Artifact, BuildKernel as KernelPin, BuildPackage as KernelPackage,
    BuildRecord as ImageManifest, BUILD_RECORD_FORMAT as IMAGE_MANIFEST_FORMAT,
};
