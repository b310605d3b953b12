//! `cinder tokenize`.

use crate::model_path::ModelArg;

#[derive(clap::Args)]
pub struct TokenizeArgs {
    #[command(flatten)]
    model: ModelArg,
    /// Turn control-token text such as <|im_start|> into those tokens.
    #[arg(long)]
    special: bool,
    /// Add BOS/EOS as the model's metadata asks.
    #[arg(long)]
    add_special: bool,
    /// The text to tokenize.
    #[arg(allow_hyphen_values = true)]
    text: String,
}

pub fn run(args: TokenizeArgs) -> anyhow::Result<()> {
    let file = args.model.open()?;
    let tokenizer = cinder_tokenizer::Tokenizer::from_gguf(file.metadata())?;
    let ids = tokenizer.encode(&args.text, args.add_special, args.special)?;
    println!("{}", serde_json::to_string(&ids)?);
    Ok(())
}
