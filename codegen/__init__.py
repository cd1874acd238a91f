"""Code generation: lowering (ir), rendering the Jinja templates to BPF C (render), clang (build)."""
