//! One stage of a pipeline-parallel pass: a rank holds a contiguous range of layers (the
//! embedding on the first rank, the final norm and head on the last), hidden states flow
//! forward rank to rank and their gradients flow back. Every rank runs the operations the
//! whole model runs, so a pipelined pass computes the same bits as one process. With a
//! communicator of one rank the stage is the whole model.

use crate::collective::{CommError, Communicator};
use crate::error::{Error, Result};
use crate::model::{Exec, LlamaModel};
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

fn comm_err(e: CommError) -> Error {
    Error::collective("pipeline", e)
}

fn is_last(comm: &dyn Communicator) -> bool {
    comm.rank() + 1 == comm.world_size()
}

/// This stage's input: the embedded tokens on the first rank, else the previous rank's output.
fn stage_input(model: &LlamaModel, comm: &mut dyn Communicator, ids: &Tensor) -> Result<Tensor> {
    let (b, t) = ids.dims2()?;
    let h = model.spec.hidden_size;
    if comm.rank() == 0 {
        return model.embed_tokens(ids);
    }
    comm.recv_tensor(comm.rank() - 1, &[b, t, h], model.dtype(), model.device()).map_err(comm_err)
}

/// One forward pass over `ids` `[B, T]`: this stage's layers, then `head` on the last
/// hidden states (on the last rank, which returns its result; the others return `None`).
pub fn stage_forward<T>(
    model: &LlamaModel,
    comm: &mut dyn Communicator,
    ids: &Tensor,
    exec: Exec,
    head: impl FnOnce(&Tensor) -> Result<T>,
) -> Result<Option<T>> {
    let x = stage_input(model, comm, ids)?;
    let out = model.forward_layers(x, exec)?;
    if is_last(comm) {
        return head(&out).map(Some);
    }
    comm.send_tensor(&out, comm.rank() + 1).map_err(comm_err)?;
    Ok(None)
}

/// One inference pass of this stage over several batches `ids` (each `[B, T]`), layer by layer:
/// every batch's input is received (or embedded) first, `layer` then takes all of them through
/// each of the stage's layers in turn (by position in the stage), and every batch's output goes
/// on to the next rank last. Each batch meets the operations of [`stage_forward`], so
/// its numbers are the same; what changes is what lives at once (one layer's worth of whatever
/// `layer` gathers, every batch's hidden states) and that stages take their turns instead of
/// overlapping.
pub fn stage_forward_layer_major(
    model: &LlamaModel,
    comm: &mut dyn Communicator,
    ids: &[Tensor],
    layer: &mut dyn FnMut(usize, &mut [Tensor]) -> Result<()>,
) -> Result<()> {
    let mut hidden = ids.iter().map(|ids| stage_input(model, comm, ids)).collect::<Result<Vec<_>>>()?;
    for position in 0..model.layers.len() {
        layer(position, &mut hidden)?;
    }
    if !is_last(comm) {
        for out in &hidden {
            comm.send_tensor(out, comm.rank() + 1).map_err(comm_err)?;
        }
    }
    Ok(())
}

/// One backward pass over `ids` `[B, T]`: the forward pass, `head` turning the last hidden
/// states into the scalar to differentiate (on the last rank), then the gradient of each
/// stage's input sent back to the previous rank. Returns this rank's gradients.
pub fn stage_backward(model: &LlamaModel, comm: &mut dyn Communicator, ids: &Tensor, head: impl FnOnce(&Tensor) -> Result<Tensor>) -> Result<GradStore> {
    Ok(stage_backward_to_embeddings(model, comm, ids, head, false)?.0)
}

/// [`stage_backward`]; with `embedding_leaf` the first rank's embedded tokens are a leaf of
/// the graph and their gradient `[B·T, H]` comes back beside the store (the embedding weight
/// then gets none from this pass: the caller accumulates it, as for a tied head).
pub fn stage_backward_to_embeddings(
    model: &LlamaModel,
    comm: &mut dyn Communicator,
    ids: &Tensor,
    head: impl FnOnce(&Tensor) -> Result<Tensor>,
    embedding_leaf: bool,
) -> Result<(GradStore, Option<Tensor>)> {
    let (b, t) = ids.dims2()?;
    let h = model.spec.hidden_size;
    let device = model.device();
    let first = comm.rank() == 0;
    let x = stage_input(model, comm, ids)?;
    // Received hidden states (or, asked for, the embedded tokens) are a leaf whose gradient
    // goes back to the previous rank (or to the caller).
    let input: Option<Var> = if first && !embedding_leaf { None } else { Some(Var::from_tensor(&x)?) };
    let x = match &input {
        Some(v) => v.as_tensor().clone(),
        None => x,
    };
    let out = model.forward_layers(x, Exec::Differentiable)?;
    let store = if is_last(comm) {
        head(&out)?.backward()?
    } else {
        comm.send_tensor(&out, comm.rank() + 1).map_err(comm_err)?;
        let g = comm.recv_tensor(comm.rank() + 1, &[b, t, h], out.dtype(), device).map_err(comm_err)?;
        // d(Σ out·g)/d(out) = g exactly: the gradient the full model's graph would carry here.
        (out * g)?.sum_all()?.backward()?
    };
    match &input {
        Some(v) if first => {
            let gx = match store.get(v.as_tensor()) {
                Some(g) => g.reshape((b * t, h))?,
                None => Tensor::zeros((b * t, h), v.as_tensor().dtype(), device)?,
            };
            return Ok((store, Some(gx)));
        }
        Some(v) => {
            let gx = match store.get(v.as_tensor()) {
                Some(g) => g.clone(),
                None => v.as_tensor().zeros_like()?,
            };
            comm.send_tensor(&gx, comm.rank() - 1).map_err(comm_err)?;
        }
        None => {}
    }
    Ok((store, None))
}
