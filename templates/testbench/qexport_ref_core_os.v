// qexport behavioural reference core, output-stationary: a ROWS x COLS array in which PE (row, oc)
// holds output pixel pass*ROWS + row of the tile (row-major) and output channel oc of the output
// tile, and accumulates it in place over every input channel and kernel position of a
// KERNEL x KERNEL conv (no psum memory, no address table). It reads the `course-os` file set.
// Not synthesizable; it computes in one clock what the real array computes over many, so a
// testbench rendered by `qexport testbench --profile course-os` runs out of the box. Replace it
// with your DUT: the testbench drives these ports and this handshake, and nothing else.
//
// Interface (all inputs are sampled on the rising edge of clk; the testbench changes them just
// after a falling edge):
//   act_we, act_addr, act_data   the pass's activation stream: line ic*KERNEL*KERNEL + kij
//                                (CHANNELS*KERNEL*KERNEL lines), ROWS lanes of ACT_BITS
//                                (unsigned), lane row = the grid value pixel row reads there
//                                (the file activation_tile<s>_pass<p>, line for line)
//   w_we, w_kij, w_line, w_data  weights of kernel position kij (ki*KERNEL + kj): line ic
//                                (CHANNELS lines), COLS lanes of W_BITS (signed), lane = output
//                                channel (the file weight_otile<o>_kij<k>)
//   clear    high for one rising edge: zero the accumulators
//   start    high for one rising edge: add the loaded stream's sums to the accumulators
//   done     high for at least one clock once that sum is in the accumulators
//   out_addr (PE row = pixel pass*ROWS + row) -> out_data (COLS lanes of OUT_BITS, output
//            channel 0 lowest; ReLU'd when RELU), the file out_tile<s>_pass<p>_otile<o>
// Lane 0 sits in the low bits of every word, as $readmem puts a file's rightmost digit at bit 0.
//
// Handshake, per pass and output-channel tile:
//   1. load the activation stream and the KERNEL*KERNEL weight files; pulse clear, then start,
//      each for one clock;
//   2. the testbench then looks at done at every falling edge, starting half a clock after the
//      rising edge that took start, and fails naming the tile and pass if done is not high within
//      TIMEOUT_CYCLES clocks (a tb parameter, default 100000). Any latency is fine; done must stay
//      low from that start until the sum is complete, and the inputs hold still meanwhile.
//   3. after done, out_data may be read; before that it may be anything (X included).
// Read latency: one clock. The testbench sets out_addr after a falling edge and samples out_data
// at the next falling edge, so out_data may be registered on the rising edge in between (as here)
// or be combinational.
`timescale 1ns/1ps
module qexport_ref_core_os #(
    parameter ROWS = 8,
    parameter COLS = 8,
    parameter ACT_BITS = 4,
    parameter W_BITS = 4,
    parameter OUT_BITS = 16,
    parameter CHANNELS = 8,
    parameter KERNEL = 3,
    parameter RELU = 1
) (
    input  wire clk,
    input  wire act_we,
    input  wire [15:0] act_addr,
    input  wire [ROWS*ACT_BITS-1:0] act_data,
    input  wire w_we,
    input  wire [3:0] w_kij,
    input  wire [15:0] w_line,
    input  wire [COLS*W_BITS-1:0] w_data,
    input  wire clear,
    input  wire start,
    output reg  done,
    input  wire [15:0] out_addr,
    output wire [COLS*OUT_BITS-1:0] out_data
);
    localparam TAPS = KERNEL * KERNEL;

    reg [ROWS*ACT_BITS-1:0] act [0:CHANNELS*TAPS-1];
    reg [COLS*W_BITS-1:0] wgt [0:TAPS*CHANNELS-1];
    // PE (row, oc) at row*COLS + oc: its pixel x channel, accumulated in place
    reg signed [63:0] acc [0:ROWS*COLS-1];

    integer r, oc, ic, k, p;
    reg signed [63:0] sum;
    reg [ACT_BITS:0] x_lane;
    reg signed [W_BITS:0] w_lane;

    always @(posedge clk) begin
        done <= 1'b0;
        if (act_we) act[act_addr] <= act_data;
        if (w_we) wgt[w_kij*CHANNELS + w_line] <= w_data;
        if (clear) for (p = 0; p < ROWS*COLS; p = p + 1) acc[p] = 0;
        if (start) begin
            for (r = 0; r < ROWS; r = r + 1)
                for (oc = 0; oc < COLS; oc = oc + 1) begin
                    sum = 0;
                    for (ic = 0; ic < CHANNELS; ic = ic + 1)
                        for (k = 0; k < TAPS; k = k + 1) begin
                            x_lane = {1'b0, act[ic*TAPS + k][r*ACT_BITS +: ACT_BITS]};
                            w_lane = {wgt[k*CHANNELS + ic][oc*W_BITS + W_BITS - 1],
                                      wgt[k*CHANNELS + ic][oc*W_BITS +: W_BITS]};
                            sum = sum + $signed(x_lane) * w_lane;
                        end
                    acc[r*COLS + oc] = acc[r*COLS + oc] + sum;
                end
            done <= 1'b1;
        end
    end

    // the read is registered: out_data shows PE row out_addr one rising edge after out_addr
{% include "testbench/_registered_read.v.j2" %}
endmodule
