//! `cinder`: the command-line front end of the engine.

mod bench;
mod bench_serve;
mod device_arg;
mod kv_arg;
mod generate;
mod model_path;
mod plot;
mod serve;
mod simulate;
mod synth;
mod tokenize;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cinder", version, about = "Portable LLM inference on any GPU through wgpu")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Measure prefill and decode speed (optionally against llama.cpp's llama-bench).
    Bench(bench::BenchArgs),
    /// Generate text from a prompt, streaming it to standard output.
    Generate(generate::GenerateArgs),
    /// Print the token ids of a text as a JSON array.
    Tokenize(tokenize::TokenizeArgs),
    /// Serve the model over an OpenAI-compatible HTTP API.
    Serve(serve::ServeArgs),
    /// Compare batching strategies in the scheduler's simulator; write JSON and SVG plots.
    Simulate(simulate::SimulateArgs),
    /// Write a random-weight GGUF with the shapes and metadata of a known model.
    Synth(synth::SynthArgs),
    /// Write a random LoRA adapter (GGUF, as llama.cpp reads them) for a model file.
    SynthLora(synth::SynthLoraArgs),
}

/// The engine's clock for this process: microseconds since the call.
fn wall_clock() -> impl Fn() -> cinder_scheduler::Time + Copy {
    let origin = std::time::Instant::now();
    move || cinder_scheduler::Time(origin.elapsed().as_micros() as u64)
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            // wgpu probes every graphics API at start; on machines without GL drivers its EGL
            // probe logs an error even when Vulkan works. CINDER_LOG brings it back.
            tracing_subscriber::EnvFilter::try_from_env("CINDER_LOG")
                .unwrap_or_else(|_| "warn,wgpu_hal::gles::egl=off".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Bench(args) => bench::run(args),
        Command::Generate(args) => generate::run(args),
        Command::Tokenize(args) => tokenize::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Simulate(args) => simulate::run(args),
        Command::Synth(args) => synth::run(args),
        Command::SynthLora(args) => synth::run_lora(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
