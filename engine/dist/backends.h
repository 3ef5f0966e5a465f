// Constructors of the mpi and nccl backends, each defined in its own file (comm_mpi.cpp,
// comm_nccl.cpp); without the library they throw an error saying the build lacks it.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "engine/dist/communicator.h"

namespace ttq::detail {

// The process's MPI communicator (MPI is initialised on its communication thread the first time).
std::shared_ptr<Communicator> mpi_world_communicator(double timeout_s);
// Joins the MPI communication thread after MPI_Finalize; MPI cannot be used again afterwards.
void shutdown_mpi() noexcept;

// A NCCL communicator over the ranks of `host` (mpi or tcp), which carries the unique id, the host
// counters, broadcasts and barriers. Binds this process to GPU local_rank.
std::shared_ptr<Communicator> make_nccl_communicator(std::shared_ptr<Communicator> host, double timeout_s);

// "12.50 MiB" or "4096 bytes", for messages about a collective's size.
std::string size_str(size_t bytes);

}  // namespace ttq::detail
