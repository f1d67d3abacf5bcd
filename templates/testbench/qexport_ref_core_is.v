// qexport behavioural reference core, input-stationary: a ROWS x COLS array in which PE (row, col)
// holds input channel row (of the input-channel tile) of the grid value that output pixel
// pass*COLS + col of the tile (row-major) reads at the current kernel position; each output
// channel's weights stream past, and column col sums its pixel over the rows and kernel positions
// of a KERNEL x KERNEL conv. It reads the `systolic-is` file set.
// Not synthesizable; it computes in one clock what the real array computes over many, so a
// testbench rendered by `qexport testbench --profile systolic-is` runs out of the box. Replace it
// with your DUT: the testbench drives these ports and this handshake, and nothing else.
//
// Interface (all inputs are sampled on the rising edge of clk; the testbench changes them just
// after a falling edge):
//   act_we, act_addr, act_data   the pass's activations of one input-channel tile: line
//                                kij*ROWS + row (KERNEL*KERNEL*ROWS lines), COLS lanes of ACT_BITS
//                                (unsigned), lane col = the value PE (row, col) holds at kernel
//                                position kij (the file activation_tile<s>_itile<i>_pass<p>)
//   w_we, w_kij, w_line, w_data  weights of kernel position kij (ki*KERNEL + kj): line oc (COLS
//                                lines: the output-channel tile), ROWS lanes of W_BITS (signed),
//                                lane = input channel (the file weight_itile<i>_otile<o>_kij<k>)
//   clear    high for one rising edge: zero the accumulators
//   start    high for one rising edge: add the loaded input-channel tile's sums to the accumulators
//   done     high for at least one clock once that sum is in the accumulators
//   out_addr (output channel oc of the tile) -> out_data (COLS lanes of OUT_BITS, lane col = pixel
//            pass*COLS + col, col 0 lowest; ReLU'd when RELU), the file out_tile<s>_pass<p>_otile<o>
// Lane 0 sits in the low bits of every word, as $readmem puts a file's rightmost digit at bit 0.
//
// Handshake, per pass and output-channel tile:
//   1. pulse clear for one clock; then per input-channel tile load its activations and the
//      KERNEL*KERNEL weight files and pulse start for one clock;
//   2. the testbench then looks at done at every falling edge, starting half a clock after the
//      rising edge that took start, and fails naming the tile, pass and input tile if done is not
//      high within TIMEOUT_CYCLES clocks (a tb parameter, default 100000). Any latency is fine;
//      done must stay low from that start until the sum is complete, and the inputs hold still.
//   3. after the last input-channel tile's done, out_data may be read; before that it may be
//      anything (X included).
// Read latency: one clock. The testbench sets out_addr after a falling edge and samples out_data
// at the next falling edge, so out_data may be registered on the rising edge in between (as here)
// or be combinational.
`timescale 1ns/1ps
module qexport_ref_core_is #(
    parameter ROWS = 8,
    parameter COLS = 8,
    parameter ACT_BITS = 4,
    parameter W_BITS = 4,
    parameter OUT_BITS = 16,
    parameter KERNEL = 3,
    parameter RELU = 1
) (
    input  wire clk,
    input  wire act_we,
    input  wire [15:0] act_addr,
    input  wire [COLS*ACT_BITS-1:0] act_data,
    input  wire w_we,
    input  wire [3:0] w_kij,
    input  wire [15:0] w_line,
    input  wire [ROWS*W_BITS-1:0] w_data,
    input  wire clear,
    input  wire start,
    output reg  done,
    input  wire [15:0] out_addr,
    output wire [COLS*OUT_BITS-1:0] out_data
);
    localparam TAPS = KERNEL * KERNEL;

    reg [COLS*ACT_BITS-1:0] act [0:TAPS*ROWS-1];
    reg [ROWS*W_BITS-1:0] wgt [0:TAPS*COLS-1];
    // output channel oc of column col's pixel at oc*COLS + col
    reg signed [63:0] acc [0:COLS*COLS-1];

    integer oc, col, row, k, p;
    reg signed [63:0] sum;
    reg [ACT_BITS:0] x_lane;
    reg signed [W_BITS:0] w_lane;

    always @(posedge clk) begin
        done <= 1'b0;
        if (act_we) act[act_addr] <= act_data;
        if (w_we) wgt[w_kij*COLS + w_line] <= w_data;
        if (clear) for (p = 0; p < COLS*COLS; p = p + 1) acc[p] = 0;
        if (start) begin
            for (oc = 0; oc < COLS; oc = oc + 1)
                for (col = 0; col < COLS; col = col + 1) begin
                    sum = 0;
                    for (k = 0; k < TAPS; k = k + 1)
                        for (row = 0; row < ROWS; row = row + 1) begin
                            x_lane = {1'b0, act[k*ROWS + row][col*ACT_BITS +: ACT_BITS]};
                            w_lane = {wgt[k*COLS + oc][row*W_BITS + W_BITS - 1],
                                      wgt[k*COLS + oc][row*W_BITS +: W_BITS]};
                            sum = sum + $signed(x_lane) * w_lane;
                        end
                    acc[oc*COLS + col] = acc[oc*COLS + col] + sum;
                end
            done <= 1'b1;
        end
    end

    // the read is registered: out_data shows output channel out_addr one rising edge after out_addr
{% include "testbench/_registered_read.v.j2" %}
endmodule
