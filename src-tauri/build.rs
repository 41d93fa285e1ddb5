//! Generates the Tauri context (configuration, embedded `ui/` assets, permissions) for the
//! desktop app. A build without the `gui` feature has nothing to generate.

fn main() {
    #[cfg(feature = "gui")]
    tauri_build::build();
}
