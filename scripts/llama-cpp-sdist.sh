# The llama-cpp-python source package whose vendored llama.cpp cinder compares against:
# setup.sh takes the tokenizer tests' vocabularies from it, build-peer.sh builds llama.cpp.
LLAMA_CPP_SDIST_URL="https://files.pythonhosted.org/packages/ec/e9/e7de2b0463ea3ffbf0ede6cb21b58c1258a8f6521aae45ca773a59fe7cf3/llama_cpp_python-0.3.36.tar.gz"
LLAMA_CPP_SDIST_SHA256="832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
LLAMA_CPP_SDIST_DIR="llama_cpp_python-0.3.36"
